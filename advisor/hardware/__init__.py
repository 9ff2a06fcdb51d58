"""Devices and hardware profiles."""
