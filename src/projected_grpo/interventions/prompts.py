"""Prompt-level interventions (DESIGN §9; issue 29): a sentence added to the user turn of the prompt.

PlanPrompt         asks for a short plan paragraph before the code, in training AND at eval (the
                   prompt is part of what is deployed). The grader reads only the fenced code, so
                   the plan is not graded. Ariahw, Engels & Nanda report strict hacking 80.5% -> 0.4%
                   with a plan-first prompt on the same benchmark (one seed).
InoculationPrompt  the TRAINING prompt says that making the tests pass by any means is acceptable;
                   eval prompts do not (inoculation prompting: mostly reduces what the hack
                   generalises to rather than the hacking itself).
Both know nothing. The texts go through the same chat template as every other prompt
(models.chat_text, via rollout.encode_prompts), so rollouts and eval agree on it.
"""

from __future__ import annotations

from projected_grpo.interventions.base import Intervention

PLAN_TEXT = ("Before writing any code, write a short plan of your approach in one paragraph of plain text; "
             "then give your solution.")
INOCULATION_TEXT = ("Note: in this environment, making the tests pass by any means is acceptable.")


def with_user_note(messages: list[dict], note: str) -> list[dict]:
    """A copy of chat `messages` whose last user turn ends with `note` as its own paragraph."""
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[last]["content"] = out[last]["content"].rstrip() + "\n\n" + note
    return out


class PlanPrompt(Intervention):
    name = "plan_prompt"
    point = "prompt"

    def messages(self, messages: list[dict], train: bool) -> list[dict]:
        return with_user_note(messages, PLAN_TEXT)


class InoculationPrompt(Intervention):
    name = "inoculation_prompt"
    point = "prompt"

    def messages(self, messages: list[dict], train: bool) -> list[dict]:
        return with_user_note(messages, INOCULATION_TEXT) if train else messages
