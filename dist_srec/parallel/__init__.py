"""How work is split over ranks: the rank context of a training process (`context`), and the DeepSpeed
placement of the frozen LM (`deepspeed_config`, `lm_engine`: the LM alone in an engine; `one_engine`:
one engine over LM and heads)."""
