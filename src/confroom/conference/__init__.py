"""Conferences: state and registry, the mix on the media clock, the service and the verb."""
