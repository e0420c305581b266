"""Tests that start real Flower processes (SuperLink, SuperNodes, CLI) on loopback."""
