"""Media: RTP, G.711, jitter buffer, audio sources and the one 20 ms media clock."""
