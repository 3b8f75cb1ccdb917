"""Stage-1 training objectives: ITC, ITM, ITG, item-item and user-item."""
