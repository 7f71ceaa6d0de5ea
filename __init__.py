"""mobilec: MobileNet-class vision models from PyTorch to a native library on ARM phone CPUs.

Importing ``mobilec`` loads nothing heavy: each subpackage (``frontends``, ``compiler``,
``schedules``, ``rpc``, ``runtime``) is imported only when used, so an app that needs only
``mobilec.runtime`` never pulls in torch, onnx or TVM's compiler library.
"""

__version__ = "0.1.0"
