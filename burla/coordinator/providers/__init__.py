"""Node providers: where the coordinator's nodes come from (`base` says what each offers)."""
