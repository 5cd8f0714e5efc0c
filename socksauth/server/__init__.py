"""The asyncio side: listeners, one handler per client, outbound connections, the relay."""
