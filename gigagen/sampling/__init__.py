"""Pure sampling functions: noise schedules, DDIM steps, guidance. No state between steps."""
