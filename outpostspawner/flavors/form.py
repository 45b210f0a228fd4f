"""The default spawn form: the systems and their flavors, with usage and limits.

:func:`options_form` is ``OutpostSpawner.options_form`` unless configured: it
shows the flavors the user sees (nothing, and so no form, when no Outpost reports
any), full flavors disabled. The spawner turns the choice into ``user_options``
(``system``, ``flavor``, see :func:`take_choice`) whatever ``options_from_form``
does with the other fields. Everything from the Outposts is HTML-escaped (Jinja2
autoescape). Administrators replace the form with their own ``options_form``, or
extend it with :func:`render` (the flavors' HTML) inside their own.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment

from .model import NAME
from .service import flavors_service
from .spawn import running_of

FIELD = "outpost_flavor"

TEMPLATE = """\
<div class="outpost-flavors">
{%- for system, flavors in systems %}
  <fieldset class="mb-3">
    <legend>{{ titles.get(system, system) }}</legend>
    {%- for f in flavors %}
    <div class="form-check">
      <input class="form-check-input" type="radio" name="{{ field }}"
             id="{{ f.id }}" value="{{ system }}/{{ f.name }}"
             {%- if f.full %} disabled{% endif %}{% if f.checked %} checked{% endif %}>
      <label class="form-check-label" for="{{ f.id }}">
        <strong>{{ f.title }}</strong>
        <span class="text-muted">({{ f.usage }})</span>
        {%- if f.full %} <span class="badge bg-secondary">full</span>{% endif %}
        {%- if f.description %}<br><small>{{ f.description }}</small>{% endif %}
      </label>
    </div>
    {%- endfor %}
  </fieldset>
{%- endfor %}
{%- if credits %}
  <div class="outpost-credits small text-muted">
  {%- for system, value in credits %}
    <div>{{ titles.get(system, system) }} credits: {{ value }}</div>
  {%- endfor %}
  </div>
{%- endif %}
</div>
"""

_env = Environment(autoescape=True)


def _runtime(runtime: Any) -> str:
    if not isinstance(runtime, dict):
        return ""
    return ", ".join(f"{v:g} {k}" for k, v in runtime.items() if isinstance(v, int | float))


def _flavor_entries(spawner: Any, system: str, flavors: dict, prefix: str) -> list[dict]:
    entries = []
    ordered = sorted(
        flavors.items(),
        key=lambda kv: (kv[1].get("weight", 0) if isinstance(kv[1], dict) else 0, kv[0]),
    )
    for i, (name, f) in enumerate(ordered):
        if not isinstance(f, dict):
            continue
        most, current = f.get("max", -1), f.get("current", 0)
        per_user = f.get("maxPerUser")
        mine = running_of(spawner, system, name)
        usage = [f"{current} of {most} in use" if most >= 0 else f"{current} in use"]
        if isinstance(per_user, int) and per_user >= 0:
            usage.append(f"{mine} of {per_user} yours")
        if f.get("runtime"):
            usage.append(f"runs at most {_runtime(f['runtime'])}")
        full = (most >= 0 and current >= most) or (
            isinstance(per_user, int) and per_user >= 0 and mine >= per_user
        )
        entries.append(
            {
                "id": f"{prefix}-{i}",
                "name": name,
                "title": f.get("display_name") or name,
                "description": f.get("description", ""),
                "usage": "; ".join(usage),
                "full": full,
                "checked": False,
            }
        )
    return entries


def _credits_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_credits_text(v)}" for k, v in value.items())
    return str(value)


def render(spawner: Any, flavors: dict[str, dict], credits: dict | None = None) -> str:
    """The form's HTML for these flavors (system -> flavors) and credits (system
    -> the Outpost's credits answer)."""
    credits = credits if isinstance(credits, dict) else {}
    systems = []
    for n, system in enumerate(sorted(flavors)):
        if isinstance(flavors[system], dict) and flavors[system]:
            entries = _flavor_entries(spawner, system, flavors[system], f"flavor-{n}")
            systems.append((system, entries))
    if not systems:
        return ""
    for _, entries in systems:  # preselect the first flavor that has room
        free = [e for e in entries if not e["full"]]
        if free:
            free[0]["checked"] = True
            break
    shown_credits = [(system, _credits_text(value)) for system, value in sorted(credits.items())]
    titles = {
        system: entry["display_name"]
        for system, entry in flavors_service(spawner.config).outposts().items()
        if entry["display_name"]
    }
    return _env.from_string(TEMPLATE).render(
        systems=systems, field=FIELD, credits=shown_credits, titles=titles
    )


async def options_form(spawner: Any) -> str:
    """The default ``options_form``: the user's flavors, or ``""`` (no form)."""
    service = flavors_service(spawner.config)
    flavors = await service.for_user(spawner.user)
    credits = await service.credits_for_user(spawner.user)
    return render(spawner, flavors, credits)


def take_choice(spawner: Any, form_data: dict[str, list[str]]) -> tuple[dict, dict]:
    """Split the flavor chosen in the form off ``form_data``: ``(the other fields,
    {system, flavor})`` (an empty dict when the form had no choice). The spawner
    runs its ``options_from_form`` on the other fields and adds the choice, so a
    replaced or extended form keeps JupyterHub's conversions.

    :raises ValueError: for a choice that cannot be a system and flavor (JupyterHub
        shows it to the user)
    """
    rest = {k: v for k, v in form_data.items() if k != FIELD}
    values = form_data.get(FIELD)
    if not values:
        return rest, {}
    system, _, flavor = str(values[0]).rpartition("/")
    if len(values) != 1 or not system or len(system) > 255 or not NAME.fullmatch(flavor):
        raise ValueError("Choose one of the flavors shown.")
    cfg = flavors_service(spawner.config).cfg
    return rest, {cfg.system_key: system, cfg.flavor_key: flavor}
