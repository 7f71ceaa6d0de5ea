"""Kernel schedules: MetaSchedule tuning over RPC (XGBoost cost model), the tuning databases and
their application at compile time. Uses ``mobilec.rpc`` for runners through the tracker."""

from mobilec.schedules.database import database_dir, is_database, merge, open_database

__all__ = ["database_dir", "is_database", "merge", "open_database"]
