"""Placeholder: filled in by the service work."""

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    return None
