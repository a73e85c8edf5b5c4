"""Shared multi-process test harness: processes, ports, consortia, a fault proxy, small disks, checker."""
