"""What every HTTP route shares: the operator credential, bounded parameters, error bodies."""
