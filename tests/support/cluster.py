"""The cluster handle tests use (it lives in the package so benchmarks share it)."""

from dfms.localstack.handle import ClusterHandle, attach, make_data_dir, pid_alive

__all__ = ["ClusterHandle", "attach", "make_data_dir", "pid_alive"]
