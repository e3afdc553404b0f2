"""Dead letters: tasks that failed for good, kept so an operator can look and re-drive."""
