"""The run folder and everything about it: layout, records, the lock, resuming."""

from lightseg.runs.folder import RunFolder, find_runs
from lightseg.runs.record import recorded_run
from lightseg.utils.locks import RunLock
