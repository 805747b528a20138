"""What the two apps need to run as pinned services: CPU pinning and SCHED_FIFO (`realtime`), systemd's
notify and watchdog (`sdnotify`, `service`), the off-loop reporter thread (`reporter`) and the state file
that `lalelu check` and `fab` read (`state`)."""
