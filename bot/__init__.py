"""The liquidation keeper: mirrors every account from events, detects liquidatable accounts when
prices move, and sends the most profitable liquidations net of gas. Imports ``protocol_model``
(and through it ``contracts``), never ``simulator``, ``devnode`` or ``cli``."""
