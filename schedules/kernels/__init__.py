"""One file per kernel kind: its default schedule, which is also its MetaSchedule design space
(``schedules/defaults.py`` picks the kind of each kernel and applies it)."""
