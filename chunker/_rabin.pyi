from typing_extensions import Buffer as _Buffer

POLYNOMIAL: int
WINDOW_SIZE: int

def find_cut(buffer: _Buffer, start: int, min_size: int, max_size: int, mask: int, /) -> int: ...
def fingerprint(data: _Buffer, /) -> int: ...
