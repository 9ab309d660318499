"""Weijian (卫监): online monitoring for a municipal health-supervision bureau."""

__version__ = "0.1.0"
