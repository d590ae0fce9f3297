"""Shared pytest configuration: makes the real-component fixtures available to every test module."""

from tests.realworld import aria2, opentracker

__all__ = ["aria2", "opentracker"]
