"""Clustering on Redis: the shared registry, node heartbeats and leases, node-to-node legs.

Nothing outside this package imports Redis; the server builds a `ClusterNode` only when
`[cluster] redis` is set.
"""
