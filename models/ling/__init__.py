"""Ling (BailingMoeV2) family."""
