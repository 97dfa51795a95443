"""The public HTTP gateway (aiohttp)."""
