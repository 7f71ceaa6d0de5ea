// mobilec's per-kernel timer: the Relax VM's instrument, built for the device that runs the model.
//
// The VM calls its instrument before and after every function call of a model (kernels and its
// own builtins) with (function, symbol, before_run, return value, arguments...). A Python callback
// can only run where Python runs the model; this library is compiled by the target's own compiler
// (schedules/kernel_timer.py) and loaded beside the model, locally or into an RPC session, so a
// kernel is timed inside the whole model on the device itself, by one code path.
//
//   mobilec_kernel_timer_attach(vm, on)   set (on) or clear the instrument of ``vm``, a Relax VM
//                                         module loaded in the same process (an RPC session cannot
//                                         pass a function back to the device, a module it can)
//   mobilec_kernel_timer_report() -> str  {"symbol": [seconds per call, ...]} as JSON, since the last
//                                         report
#include <tvm/ffi/any.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Calls {
  std::mutex lock;  // the VM calls from one thread; a report may come from another
  std::vector<Clock::time_point> started;       // a stack: calls nest (a closure calling kernels)
  std::map<std::string, std::vector<double>> seconds;  // per symbol, each call in order
};

Calls& calls() {
  static Calls c;
  return c;
}

// the instrument: (func, symbol, before_run, ret, args...) -> 0 (run the call)
int Instrument(tvm::ffi::PackedArgs args) {
  Clock::time_point now = Clock::now();
  if (args.size() < 3) return 0;
  bool before = args[2].cast<bool>();
  Calls& c = calls();
  std::lock_guard<std::mutex> guard(c.lock);
  if (before) {
    c.started.push_back(Clock::now());
    return 0;
  }
  if (c.started.empty()) return 0;
  double secs = std::chrono::duration<double>(now - c.started.back()).count();
  c.started.pop_back();
  c.seconds[std::string(args[1].cast<tvm::ffi::String>())].push_back(secs);
  return 0;
}

void Attach(tvm::ffi::Module vm, bool on) {
  tvm::ffi::Optional<tvm::ffi::Function> set = vm->GetFunction("set_instrument");
  if (!set.has_value()) TVM_FFI_THROW(ValueError) << "mobilec_kernel_timer_attach: not a Relax VM module";
  if (on) {
    (*set)(tvm::ffi::Function::FromPacked(
        [](tvm::ffi::PackedArgs args, tvm::ffi::Any* rv) { *rv = Instrument(args); }));
  } else {
    (*set)(nullptr);
  }
}

tvm::ffi::String Report() {
  Calls& c = calls();
  std::lock_guard<std::mutex> guard(c.lock);
  std::string out = "{";
  char number[32];
  for (const auto& [symbol, secs] : c.seconds) {
    if (out.size() > 1) out += ",";
    out += "\"" + symbol + "\":[";  // symbols are C identifiers: nothing to escape
    for (size_t i = 0; i < secs.size(); ++i) {
      std::snprintf(number, sizeof(number), "%s%.9g", i ? "," : "", secs[i]);
      out += number;
    }
    out += "]";
  }
  c.seconds.clear();
  c.started.clear();
  return tvm::ffi::String(out + "}");
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(mobilec_kernel_timer_attach, Attach);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(mobilec_kernel_timer_report, Report);
