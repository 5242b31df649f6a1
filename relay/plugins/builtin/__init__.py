"""relay's built-in behaviour, written as ordinary plugins so that users can replace any part."""
