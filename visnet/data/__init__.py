"""Data sets in the Street2Shop layout: reading, writing, catalog import, and builders."""
