"""The pure image engine: no oslo.messaging, no oslo.privsep, no oslo.config.

Everything here takes its settings as arguments (see ``settings.Settings``),
so it is testable without root or a broker.
"""
