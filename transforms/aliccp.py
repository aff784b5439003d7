"""Read the raw Ali-CCP release (ESMM paper's data set) into labelled impressions.

Flow: sample_skeleton_*.csv + common_features_*.csv -> **ParseSkeleton /
ParseCommonFeatures -> JoinCommonFeatures** -> labelled records (the shape
`transforms.label.JoinAndLabel` emits) -> EncodeExamples -> ... (transforms/preprocess_job.py).

The raw layout (lines of comma-separated columns; no header):

  sample_skeleton: sample_id, click, buy, md5, feature_num, feature_list
  common_features: md5, feature_num, feature_list

A feature list is `field \\x02 feature_id \\x03 value` items joined by `\\x01`. The skeleton
holds the item / context / combination fields of one impression, the common-features row
(keyed by md5) the user fields shared by many impressions. A field may repeat: the
`*_14` user-history fields (109_14, 110_14, 127_14, 150_14), 210 and the combination
fields 508/509/702/853 hold lists whose values (counts) matter.

What becomes of a field (the spec decides; see `field_feature_name` for the names):
  * multivalent feature: every feature id, in order; if `weighted`, the values go in
    `<name>__weight` (same length). Nothing is dropped, unlike "last value wins" readers.
  * scalar feature: the single feature id (the value, 1.0 in the release, is not kept);
    a second item of that field is a dead letter `repeated_single_valued_field`.
  * dtype: string -> the feature id as text; int -> the feature id as an integer;
    float -> the item's value.
  * fields the spec does not name are ignored (counted in the Beam counter
    `aliccp/ignored_items`).

Labels: `click` <- click, `purchase` <- buy. buy=1 with click=0 is a dead letter
`purchase_without_click` (data.orphan_event_policy: dead_letter) or gets click = 1
(infer_click). The Example keeps `sample_id` as `impression_id` and timestamp 0 (the
release has no time; train/eval come from separate files, not from time).

Dead letters (checked in this order, the first failure wins):
  both sources: malformed_line (column count, empty md5/sample_id, feature_num not an
    integer), [skeleton: bad_label (click/buy not 0/1), purchase_without_click],
    malformed_item (no \\x02 or \\x03, empty field or id, value not a finite number),
    feature_count_mismatch (feature_num != number of items), then the spec's coercion:
    repeated_single_valued_field, bad_type / bad_value (e.g. an int field's id not an int).
  join (per split and md5): skeleton rows whose md5 has no common-features row in the same
    split -> missing_common_features, or whose row was dead-lettered ->
    common_features_rejected; several valid common-features rows with one md5 -> the first
    (file, line) is kept, the others are duplicate_md5; a scalar field set on both sides ->
    repeated_single_valued_field (the skeleton row is dead-lettered).
Accounting: every skeleton row is written or dead-lettered; every common-features row is
used (joined to >= 1 skeleton row), unused (valid but referenced by no skeleton row of its
split: counted, not an error) or dead-lettered.

The join is a CoGroupByKey on (split, md5): the common-features side is never held in
memory as a side input, and a key's skeleton rows are streamed, not listed.
"""

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam

from features import example_codec
from features import spec as spec_lib
from transforms import dead_letter as dl
from transforms import parse as parse_lib
from transforms import split as split_lib

RECORDS = parse_lib.RECORDS
REJECTED = "rejected"  # md5s of dead-lettered common-features rows (join tombstones).
USED = "used"
UNUSED = "unused"

ITEM_SEPARATOR = "\x01"
ID_SEPARATOR = "\x02"
VALUE_SEPARATOR = "\x03"
SKELETON_COLUMNS = 6
COMMON_COLUMNS = 3
CLICK_LABEL = "click"
PURCHASE_LABEL = "purchase"
SOURCE_LABELS = (CLICK_LABEL, PURCHASE_LABEL)
TIMESTAMP = 0  # The release has no time; see the module docstring.

Item = Tuple[str, str, float]  # (field, feature id, value)


def field_feature_name(field: str) -> str:
  """The spec feature name of a raw field or CSV column: itself when it is a Python
  identifier (`D109_14`), else "f" + it (`101` -> `f101`, `109_14` -> `f109_14`).

  Feature names must be identifiers: they are keyword arguments of the `predict_raw`
  serving signature.
  """
  return field if field.isidentifier() else "f" + field


def check_source_labels(label_names: Sequence[str], source: str) -> None:
  """Sources with click/purchase columns only support exactly those two labels."""
  if tuple(label_names) != SOURCE_LABELS:
    raise ValueError(f"--source {source} has click and purchase labels only; the config's "
                     f"data.labels are {list(label_names)} (use configs/ali_ccp.yaml or "
                     "a config with labels [click, purchase])")


def source_labels(click: int, purchase: int, infer_click: bool) -> Dict[str, int]:
  """{"click", "purchase"} from 0/1 columns, enforcing purchase => click.

  Raises:
    parse.FieldError: purchase_without_click (unless `infer_click`, which sets click).
  """
  if purchase and not click:
    if not infer_click:
      raise parse_lib.FieldError(dl.PURCHASE_WITHOUT_CLICK,
                                 "purchase is 1 but click is 0 (orphan_event_policy: "
                                 "dead_letter)")
    click = 1
  return {CLICK_LABEL: click, PURCHASE_LABEL: purchase}


def parse_label(text: str, column: str) -> int:
  if text.strip() not in ("0", "1"):
    raise parse_lib.FieldError(dl.BAD_LABEL, f"column {column!r}: expected 0 or 1, got "
                               f"{text!r}")
  return int(text)


def parse_feature_list(text: str) -> List[Item]:
  """`field\\x02id\\x03value` items joined by `\\x01` -> [(field, id, value)].

  Raises:
    parse.FieldError: malformed_item, naming the item's index and text.
  """
  if not text:
    return []
  items = []
  for index, item in enumerate(text.split(ITEM_SEPARATOR)):
    field, has_id, rest = item.partition(ID_SEPARATOR)
    feature_id, has_value, value_text = rest.partition(VALUE_SEPARATOR)
    if not has_id or not has_value:
      raise parse_lib.FieldError(dl.MALFORMED_ITEM, f"item {index} {item!r}: expected "
                                 "field\\x02feature_id\\x03value")
    if not field or not feature_id or VALUE_SEPARATOR in value_text or ID_SEPARATOR in (
        feature_id + value_text):
      raise parse_lib.FieldError(dl.MALFORMED_ITEM, f"item {index} {item!r}: empty field or "
                                 "feature id, or a separator too many")
    try:
      value = float(value_text)
    except ValueError:
      value = float("nan")
    if not math.isfinite(value):
      raise parse_lib.FieldError(dl.MALFORMED_ITEM, f"item {index} {item!r}: value "
                                 f"{value_text!r} is not a finite number")
    items.append((field, feature_id, value))
  return items


def parse_feature_count(text: str) -> int:
  try:
    count = int(text)
  except ValueError:
    count = -1
  if count < 0:
    raise parse_lib.FieldError(dl.MALFORMED_LINE, f"feature_num {text!r} is not a count")
  return count


def check_feature_count(items: Sequence[Item], count: int) -> None:
  if len(items) != count:
    raise parse_lib.FieldError(dl.FEATURE_COUNT_MISMATCH, f"feature_num says {count} items, "
                               f"the feature list holds {len(items)}")


class FieldFeatures:
  """Raw (field, id, value) items or CSV cells -> coerced spec features.

  Args:
    spec: the feature spec; a feature named `field_feature_name(field)` takes that field.
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._features = {feature.name: feature for feature in spec}
    self._codec = example_codec.ExampleCodec(spec)

  def feature_of(self, field: str) -> Optional[spec_lib.Feature]:
    return self._features.get(field_feature_name(field))

  def token(self, feature: spec_lib.Feature, feature_id: str, value: float) -> Any:
    """One raw value as the feature's dtype (string id, int id, or the float value)."""
    if feature.dtype == "string":
      return feature_id
    if feature.dtype == "float":
      return value
    try:
      return int(feature_id)
    except ValueError:
      raise example_codec.RecordError(
          feature.name, dl.BAD_TYPE, f"field {feature.name!r}: feature id {feature_id!r} is "
          "not an integer") from None

  def from_items(self, items: Iterable[Item]) -> Tuple[Dict[str, Any], int]:
    """Items -> (coerced features, number of items of fields the spec does not name).

    Raises:
      example_codec.RecordError: repeated_single_valued_field, bad_type or bad_value.
    """
    raw: Dict[str, Any] = {}
    ignored = 0
    for field, feature_id, value in items:
      feature = self.feature_of(field)
      if feature is None:
        ignored += 1
        continue
      token = self.token(feature, feature_id, value)
      if feature.multivalent:
        raw.setdefault(feature.name, []).append(token)
        if feature.weighted:
          raw.setdefault(feature.weight_key, []).append(value)
      elif feature.name in raw:
        raise example_codec.RecordError(
            feature.name, dl.REPEATED_SINGLE_VALUED_FIELD,
            f"field {field!r} ({feature.name!r}) holds several items but the spec declares "
            "it single-valued (mark it multivalent to keep them all)")
      else:
        raw[feature.name] = token
    return self._codec.coerce(raw), ignored

  def merge(self, skeleton: Mapping[str, Any], common: Mapping[str, Any]) -> Dict[str, Any]:
    """Skeleton features + common features; lists of a field on both sides are joined.

    Raises:
      example_codec.RecordError: repeated_single_valued_field for a scalar on both sides.
    """
    merged = dict(common)
    for name, value in skeleton.items():
      if name not in merged:
        merged[name] = value
      elif isinstance(value, list):
        merged[name] = list(value) + list(merged[name])
      else:
        raise example_codec.RecordError(
            name, dl.REPEATED_SINGLE_VALUED_FIELD, f"field {name!r} is set by both the "
            "skeleton and the common features but the spec declares it single-valued")
    return merged


def line_features(fields: FieldFeatures, feature_list: str, feature_num: str
                  ) -> Tuple[Dict[str, Any], int]:
  """A line's feature list -> (coerced features, items of fields the spec does not name).

  Raises:
    parse.FieldError / example_codec.RecordError: the line's dead-letter reason.
  """
  count = parse_feature_count(feature_num)
  items = parse_feature_list(feature_list)
  check_feature_count(items, count)
  return fields.from_items(items)


SkeletonRow = Tuple[str, str, Dict[str, int], Dict[str, Any], int]


def parse_skeleton_line(text: str, fields: FieldFeatures, infer_click: bool) -> SkeletonRow:
  """A sample_skeleton line -> (sample_id, md5, labels, features, ignored items).

  Raises:
    parse.FieldError / example_codec.RecordError: the line's dead-letter reason.
  """
  columns = text.split(",", SKELETON_COLUMNS - 1)
  if len(columns) != SKELETON_COLUMNS:
    raise parse_lib.FieldError(dl.MALFORMED_LINE, f"{len(columns)} columns, expected "
                               "sample_id,click,buy,md5,feature_num,feature_list")
  sample_id, click, buy, md5, feature_num, feature_list = columns
  if not sample_id.strip() or not md5.strip():
    raise parse_lib.FieldError(dl.MALFORMED_LINE, "empty sample_id or md5")
  labels = source_labels(parse_label(click, "click"), parse_label(buy, "buy"), infer_click)
  features, ignored = line_features(fields, feature_list, feature_num)
  return sample_id.strip(), md5.strip(), labels, features, ignored


def common_md5(text: str) -> str:
  """The md5 of a common_features line ("" when it has none)."""
  return text.split(",", 1)[0].strip()


def parse_common_line(text: str, fields: FieldFeatures) -> Tuple[str, Dict[str, Any], int]:
  """A common_features line -> (md5, features, ignored items).

  Raises:
    parse.FieldError / example_codec.RecordError: the line's dead-letter reason (the
      line's md5, if any, is `common_md5(text)`: a join tombstone).
  """
  columns = text.split(",", COMMON_COLUMNS - 1)
  md5 = columns[0].strip()
  if len(columns) != COMMON_COLUMNS or not md5:
    raise parse_lib.FieldError(dl.MALFORMED_LINE, f"{len(columns)} columns (or an empty "
                               "md5), expected md5,feature_num,feature_list")
  features, ignored = line_features(fields, columns[2], columns[1])
  return md5, features, ignored


def line_dead_letter(source: str, split: str, file: str, line: int, error, text: str
                     ) -> Dict[str, Any]:
  """The dead letter of a release line whose parse raised `error`."""
  return dl.make_dead_letter(source, file, line, error.reason,
                             f"{split} {source}: {error.detail}", text)


class _ParseLineFn(beam.DoFn):
  """(file, line, text) of one split -> parsed rows, or dead letters."""

  source = ""

  def __init__(self, spec: spec_lib.FeatureSpec, split: str):
    self._spec = spec
    self._split = split
    self._ignored = beam.metrics.Metrics.counter("aliccp", "ignored_items")
    self._rejected = beam.metrics.Metrics.counter("aliccp", f"{self.source}_dead_letter")

  def setup(self):
    self._fields = FieldFeatures(self._spec)

  def reject(self, file, line, error, text):
    self._rejected.inc()
    return beam.pvalue.TaggedOutput(dl.DEAD_LETTER, line_dead_letter(
        self.source, self._split, file, line, error, text))


class _ParseSkeletonFn(_ParseLineFn):
  source = dl.IMPRESSIONS

  def __init__(self, spec: spec_lib.FeatureSpec, split: str, infer_click: bool):
    super().__init__(spec, split)
    self._infer_click = infer_click

  def process(self, raw):
    file, line, text = raw
    try:
      sample_id, md5, labels, features, ignored = parse_skeleton_line(
          text, self._fields, self._infer_click)
    except (parse_lib.FieldError, example_codec.RecordError) as e:
      yield self.reject(file, line, e, text)
      return
    if ignored:
      self._ignored.inc(ignored)
    yield ((self._split, md5),
           {"impression_id": sample_id, "timestamp": TIMESTAMP, "features": features,
            "labels": labels, "file": file, "line": line, "split": self._split,
            "record": text})


class _ParseCommonFn(_ParseLineFn):
  source = dl.COMMON_FEATURES

  def process(self, raw):
    file, line, text = raw
    try:
      md5, features, ignored = parse_common_line(text, self._fields)
    except (parse_lib.FieldError, example_codec.RecordError) as e:
      yield self.reject(file, line, e, text)
      if common_md5(text):
        yield beam.pvalue.TaggedOutput(REJECTED, ((self._split, common_md5(text)),
                                                  (file, line, e.reason)))
      return
    if ignored:
      self._ignored.inc(ignored)
    yield ((self._split, md5), {"features": features, "file": file, "line": line,
                                "record": text})


class ParseSkeleton(beam.PTransform):
  """(file, line, text) of skeleton files -> {"records": ((split, md5), row), "dead_letter"}.

  Args:
    spec: the feature spec.
    split: "train" or "eval": the split every row of these files goes to.
    infer_click: data.orphan_event_policy == "infer_click".
  """

  def __init__(self, spec: spec_lib.FeatureSpec, split: str, infer_click: bool = False):
    super().__init__()
    self._spec, self._split, self._infer_click = spec, split, infer_click

  def expand(self, lines):
    outputs = lines | "Parse" >> beam.ParDo(
        _ParseSkeletonFn(self._spec, self._split, self._infer_click)).with_outputs(
            dl.DEAD_LETTER, main=RECORDS)
    return {RECORDS: outputs[RECORDS], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER]}


class ParseCommonFeatures(beam.PTransform):
  """(file, line, text) of common-features files -> {"records": ((split, md5), row),
  "rejected": ((split, md5), (file, line, reason)), "dead_letter"}."""

  def __init__(self, spec: spec_lib.FeatureSpec, split: str):
    super().__init__()
    self._spec, self._split = spec, split

  def expand(self, lines):
    outputs = lines | "Parse" >> beam.ParDo(_ParseCommonFn(self._spec, self._split)).with_outputs(
        dl.DEAD_LETTER, REJECTED, main=RECORDS)
    return {RECORDS: outputs[RECORDS], REJECTED: outputs[REJECTED],
            dl.DEAD_LETTER: outputs[dl.DEAD_LETTER]}


def _skeleton_dead_letter(row: Dict[str, Any], reason: str, detail: str) -> Dict[str, Any]:
  return dl.make_dead_letter(dl.IMPRESSIONS, row["file"], row["line"], reason, detail,
                             row["record"])


def duplicate_md5_letter(split: str, md5: str, kept: Mapping[str, Any],
                         duplicate: Mapping[str, Any]) -> Dict[str, Any]:
  """The dead letter of a common-features row whose (split, md5) was already kept."""
  return dl.make_dead_letter(
      dl.COMMON_FEATURES, duplicate["file"], duplicate["line"], dl.DUPLICATE_MD5,
      f"{split} md5 {md5!r} already kept from {kept['file']} line {kept['line']}",
      duplicate["record"])


def unjoined_reason(split: str, md5: str, rejected: Sequence[Tuple[str, int, str]]
                    ) -> Tuple[str, str]:
  """(reason, detail) for skeleton rows whose md5 has no valid common-features row;
  `rejected`: (file, line, reason) of its dead-lettered rows (the first is named)."""
  if rejected:
    file, line, reason = sorted(rejected)[0]
    return (dl.COMMON_FEATURES_REJECTED,
            f"{split} md5 {md5!r}: its common-features row ({file} line {line}) was "
            f"dead-lettered ({reason})")
  return (dl.MISSING_COMMON_FEATURES,
          f"{split} md5 {md5!r} has no common-features row in the {split} files")


class _JoinFn(beam.DoFn):
  """((split, md5), {"skeleton", "common", "rejected"}) -> labelled records + accounting."""

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._spec = spec
    self._joined = beam.metrics.Metrics.counter("aliccp", "joined")

  def setup(self):
    self._fields = FieldFeatures(self._spec)

  def process(self, keyed):
    (split, md5), grouped = keyed
    commons = sorted(grouped["common"], key=lambda row: (row["file"], row["line"]))
    kept = commons[0] if commons else None
    for duplicate in commons[1:]:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER,
                                     duplicate_md5_letter(split, md5, kept, duplicate))
    if kept is None:
      reason, detail = unjoined_reason(split, md5, list(grouped["rejected"]))
      for row in grouped["skeleton"]:
        yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER,
                                       _skeleton_dead_letter(row, reason, detail))
      return
    used = False
    for row in grouped["skeleton"]:  # Streamed: a popular md5 may have many rows.
      used = True
      try:
        features = self._fields.merge(row["features"], kept["features"])
      except example_codec.RecordError as e:
        yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER,
                                       _skeleton_dead_letter(row, e.reason, e.detail))
        continue
      self._joined.inc()
      yield {"impression_id": row["impression_id"], "timestamp": row["timestamp"],
             "features": features, "labels": row["labels"], "file": row["file"],
             "line": row["line"], "split": split}
    yield beam.pvalue.TaggedOutput(USED if used else UNUSED, md5)


class JoinCommonFeatures(beam.PTransform):
  """(skeleton rows, common rows, rejected md5s), each keyed by (split, md5) ->
  {"records": labelled records with a "split" key, "dead_letter", "used", "unused"}."""

  def __init__(self, spec: spec_lib.FeatureSpec):
    super().__init__()
    self._spec = spec

  def expand(self, inputs):
    skeleton, common, rejected = inputs
    outputs = ({"skeleton": skeleton, "common": common, "rejected": rejected}
               | "CoGroup" >> beam.CoGroupByKey()
               | "Join" >> beam.ParDo(_JoinFn(self._spec)).with_outputs(
                   dl.DEAD_LETTER, USED, UNUSED, main=RECORDS))
    return {RECORDS: outputs[RECORDS], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER],
            USED: outputs[USED], UNUSED: outputs[UNUSED]}


class _BySplitFn(beam.DoFn):

  def process(self, record):
    yield beam.pvalue.TaggedOutput(record["split"], record)


class SplitByFile(beam.PTransform):
  """Records carrying a "split" key (from the files they were read from) ->
  {"train": ..., "eval": ...}."""

  def expand(self, records):
    outputs = records | "Split" >> beam.ParDo(_BySplitFn()).with_outputs(
        split_lib.TRAIN, split_lib.EVAL)
    return {split_lib.TRAIN: outputs[split_lib.TRAIN], split_lib.EVAL: outputs[split_lib.EVAL]}
