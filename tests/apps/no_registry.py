"""A module with no Registry in it."""

VALUE = 1
