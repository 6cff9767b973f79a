"""Small exact testbeds for checking algorithms against closed-form facts (ALGORITHMS.md §13)."""
