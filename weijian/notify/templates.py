"""SMS texts (zh-CN), one per template id."""

from __future__ import annotations

from typing import Any

TEMPLATES: dict[str, str] = {
    # To the site's contact phone when an alert fires.
    "alert_site": "【{sign}】{site}：{summary}（{rule_name}，依据：{source}）。请立即核查整改。",
    # To each inspector drawn for a new task.
    "task_assigned": "【{sign}】监督任务#{task_id}：{site}，{summary}。请于{due}前到场核查。",
    # To the inspectors of an open task when another serious alert joins it.
    "task_alert_joined": "【{sign}】监督任务#{task_id}新增告警：{site}，{summary}。",
}


def render(template: str, params: dict[str, Any]) -> str:
    """The SMS text of a template; KeyError names a missing parameter."""
    return TEMPLATES[template].format(**params)
