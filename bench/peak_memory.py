"""A process's own peak memory, shared by the benchmarks."""


def vm_hwm_bytes(pid: int | str = "self") -> int | None:
    """The process's own peak RSS (VmHWM from /proc/<pid>/status), or None once it has exited.

    Not `ru_maxrss` of a wait: that is the largest of the process and its waited-for children."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None
