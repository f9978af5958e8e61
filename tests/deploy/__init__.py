"""Offline checks of the container image recipe and the deployment manifests."""
