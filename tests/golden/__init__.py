"""Golden test data recorded from the papers' official code (record.py) and the inputs it ran on."""
