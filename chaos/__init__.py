"""Fault-injection suite: kill, cut and mislead Egis, and prove nothing is lost or duplicated."""
