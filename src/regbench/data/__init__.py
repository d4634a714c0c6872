"""Datasets: reading, validating and preparing CTs, landmarks and X-rays."""
