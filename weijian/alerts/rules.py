"""The rule catalogue: stable ids used by the API, SMS templates and docs/rules.md."""

from __future__ import annotations

from weijian.alerts.models import RuleSpec

_OPS = "餐饮服务食品安全操作规范（附录：餐用具清洗消毒）"
_WASTE_REG = "医疗废物管理条例 §17；医疗卫生机构医疗废物管理办法 §20"

RULES: dict[str, RuleSpec] = {
    spec.id: spec
    for spec in (
        RuleSpec(
            "disinfection.temperature_low",
            "消毒温度不达标",
            "disinfection temperature below limit",
            _OPS,
            "reg",
        ),
        RuleSpec(
            "disinfection.hold_time_short",
            "消毒保持时间不足",
            "disinfection hold time too short",
            _OPS,
            "reg",
        ),
        RuleSpec(
            "disinfection.exposure_short",
            "洗碗机消毒接触时间不足",
            "dish-machine exposure too short",
            _OPS,
            "reg",
        ),
        RuleSpec(
            "disinfection.chlorine_low",
            "消毒液有效氯浓度不足",
            "available chlorine below limit",
            _OPS,
            "reg",
        ),
        RuleSpec(
            "disinfection.immersion_short",
            "化学消毒浸泡时间不足",
            "chlorine immersion too short",
            _OPS,
            "reg",
        ),
        RuleSpec(
            "disinfection.released_undisinfected",
            "未经有效消毒即包装出厂",
            "packed without effective disinfection",
            "中华人民共和国食品安全法（出厂检验后方可出厂）",
            "reg",
        ),
        RuleSpec(
            "waste.storage_overdue",
            "医疗废物暂存超时",
            "medical waste stored too long",
            _WASTE_REG,
            "reg",
        ),
        RuleSpec(
            "waste.weight_mismatch",
            "交接重量与入库重量不符",
            "hand-over weight mismatch",
            "行业惯例（称重系统）",
            "local",
        ),
        RuleSpec(
            "waste.bag_missing",
            "医疗废物疑似流失",
            "waste bag missing (suspected loss)",
            "医疗废物管理条例（防止流失）",
            "reg",
        ),
        RuleSpec(
            "waste.cold_storage_temp_high",
            "暂存间温度过高",
            "waste store too warm",
            "医疗废物集中处置技术规范（试行）2.4",
            "reg",
        ),
        RuleSpec(
            "waste.uv_not_done",
            "暂存间紫外线消毒未落实",
            "waste store UV disinfection not done",
            "GB/T 51454-2023 §6.6.1（时长为监督所设定）",
            "std",
        ),
        RuleSpec(
            "waste.door_open_long",
            "暂存间门长时间未关",
            "waste store door left open",
            "医疗废物管理条例 §17（防盗）；时长为监督所设定",
            "policy",
        ),
        RuleSpec(
            "device.offline",
            "设备离线",
            "device offline",
            "HJ 212-2017 数据传输有效率；时长为监督所设定",
            "policy",
        ),
        RuleSpec(
            "data.flatline",
            "数据恒定不变（疑似传感器卡死或造假）",
            "flat-line data",
            "HJ 212-2017 数据有效性",
            "policy",
        ),
        RuleSpec(
            "data.out_of_range",
            "数据超出物理量程",
            "value out of physical range",
            "HJ 212-2017 数据有效性（T 超量程）",
            "policy",
        ),
        RuleSpec(
            "data.clock_skew",
            "设备时钟偏差",
            "device clock skew",
            "HJ 212-2017 数据有效性",
            "policy",
        ),
        RuleSpec(
            "data.sequence_gap",
            "数据序号缺失",
            "sequence gap (lost data)",
            "HJ 212-2017 传输率",
            "policy",
        ),
        RuleSpec("data.replay", "数据重放", "replayed data", "HJ 212-2017 数据有效性", "policy"),
        RuleSpec(
            "behaviour.anomaly",
            "行为异常（统计模型）",
            "behaviour anomaly (statistical model)",
            "统计模型（参考）",
            "policy",
        ),
    )
}


def rule(rule_id: str) -> RuleSpec:
    """The spec of a rule id; ValueError listing the valid ids if unknown."""
    try:
        return RULES[rule_id]
    except KeyError:
        raise ValueError(f"unknown rule {rule_id!r}; one of: {', '.join(sorted(RULES))}") from None
