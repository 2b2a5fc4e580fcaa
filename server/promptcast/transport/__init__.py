"""Adapters between network protocols and the runtime. They translate; they decide nothing."""
