"""SIP: sans-IO message parsing, SDP, transactions, dialogs, and the asyncio transports."""
