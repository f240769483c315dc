"""The asyncio shell: listeners, connections, routing and the commit thread."""
