//! The datafusion-proto extension codec for drove's own plan nodes: the shuffle reader
//! and the MapReduce nodes; and the decoding of plans that arrive as bytes.

use std::sync::Arc;

use arrow::compute::SortOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::{AcrossPartitions, ConstExpr, LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use drove_proto::{DroveNode, drove_node};
use prost::Message;

use crate::cache::CacheCodec;
use crate::error::decode_unpanicked;
use crate::mapreduce::nodes::{MapExec, OutputFormat, OutputSpec, ReduceExec, TextSourceExec};
use crate::shuffle::{Presented, ReadMode, ShuffleReaderExec, schema_from_bytes, schema_to_bytes};

/// Encodes and decodes drove's plan nodes inside datafusion-proto plans.
#[derive(Debug, Default)]
pub struct DroveCodec;

/// A physical expression as datafusion-proto bytes.
fn encode_expr(
    expr: &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
    codec: &DroveCodec,
) -> DfResult<Vec<u8>> {
    Ok(
        datafusion_proto::physical_plan::to_proto::serialize_physical_expr(expr, codec)?
            .encode_to_vec(),
    )
}

fn external(e: crate::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn one_input(inputs: &[Arc<dyn ExecutionPlan>], node: &str) -> DfResult<Arc<dyn ExecutionPlan>> {
    match inputs {
        [input] => Ok(Arc::clone(input)),
        _ => Err(DataFusionError::Internal(format!(
            "{node} takes one input, got {}",
            inputs.len()
        ))),
    }
}

impl PhysicalExtensionCodec for DroveCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let node = DroveNode::decode(buf)
            .map_err(|e| DataFusionError::Internal(format!("not a drove plan node: {e}")))?;
        let node = node
            .node
            .ok_or_else(|| DataFusionError::Internal("an empty drove plan node".into()))?;
        Ok(match node {
            drove_node::Node::ShuffleReader(r) => {
                if !inputs.is_empty() || r.partitions == 0 {
                    return Err(DataFusionError::Internal(
                        "a malformed shuffle reader".into(),
                    ));
                }
                let mode = match r.mode() {
                    drove_proto::ReadMode::Gather => ReadMode::Gather,
                    drove_proto::ReadMode::PerMap => ReadMode::PerMap,
                    drove_proto::ReadMode::Merge => ReadMode::Merge,
                };
                let schema = schema_from_bytes(&r.schema).map_err(external)?;
                let expr = |bytes: &[u8]| {
                    let node = datafusion_proto::protobuf::PhysicalExprNode::decode(bytes)
                        .map_err(|e| {
                            DataFusionError::Internal(format!("a malformed shuffle reader: {e}"))
                        })?;
                    datafusion_proto::physical_plan::from_proto::parse_physical_expr(
                        &node, ctx, &schema, self,
                    )
                };
                let keys = r
                    .hash_keys
                    .iter()
                    .map(|k| expr(k))
                    .collect::<DfResult<Vec<_>>>()?;
                let constants = r
                    .constants
                    .iter()
                    .map(|c| {
                        let across = if c.uniform {
                            AcrossPartitions::Uniform(None)
                        } else {
                            AcrossPartitions::Heterogeneous
                        };
                        Ok(ConstExpr::new(expr(&c.expr)?, across))
                    })
                    .collect::<DfResult<Vec<_>>>()?;
                let equal = r
                    .equal
                    .iter()
                    .map(|set| set.exprs.iter().map(|e| expr(e)).collect())
                    .collect::<DfResult<Vec<Vec<_>>>>()?;
                let orderings = r
                    .orderings
                    .iter()
                    .filter_map(|ordering| {
                        let sorts = ordering.exprs.iter().map(|s| {
                            let options = SortOptions::new(s.descending, s.nulls_first);
                            Ok(PhysicalSortExpr::new(expr(&s.expr)?, options))
                        });
                        sorts
                            .collect::<DfResult<Vec<_>>>()
                            .map(LexOrdering::new)
                            .transpose()
                    })
                    .collect::<DfResult<Vec<_>>>()?;
                let presented = Presented {
                    keys,
                    constants,
                    equal,
                    orderings,
                };
                Arc::new(ShuffleReaderExec::presenting(
                    r.stage_id,
                    mode,
                    r.partitions as usize,
                    schema,
                    presented,
                )?)
            }
            drove_node::Node::TextSource(t) => {
                if t.files.is_empty() {
                    return Err(DataFusionError::Internal(
                        "a text source without files".into(),
                    ));
                }
                Arc::new(TextSourceExec::new(t.files))
            }
            drove_node::Node::Map(m) => Arc::new(
                MapExec::try_new(
                    one_input(inputs, "MapExec")?,
                    &m.job,
                    &m.args.into_iter().collect(),
                    m.combine,
                    &m.source_name,
                )
                .map_err(external)?,
            ),
            drove_node::Node::Reduce(r) => {
                let output = OutputSpec {
                    dir: r.output_dir,
                    format: OutputFormat::parse(&r.output_format).map_err(external)?,
                    token: r.token,
                };
                let args = r.args.into_iter().collect();
                Arc::new(
                    ReduceExec::try_new(one_input(inputs, "ReduceExec")?, &r.job, &args, output)
                        .map_err(external)?,
                )
            }
        })
    }

    fn try_decode_udf(
        &self,
        name: &str,
        buf: &[u8],
    ) -> DfResult<Arc<datafusion::logical_expr::ScalarUDF>> {
        crate::python_udf::decode_udf(name, buf)
    }

    fn try_encode_udf(
        &self,
        node: &datafusion::logical_expr::ScalarUDF,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        crate::python_udf::encode_udf(node, buf)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let encoded = if let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() {
            let mode = match reader.mode() {
                ReadMode::Gather => drove_proto::ReadMode::Gather,
                ReadMode::PerMap => drove_proto::ReadMode::PerMap,
                ReadMode::Merge => drove_proto::ReadMode::Merge,
            };
            let presented = reader.presented();
            drove_node::Node::ShuffleReader(drove_proto::ShuffleReaderNode {
                stage_id: reader.stage(),
                mode: mode as i32,
                partitions: reader.partitions() as u32,
                schema: schema_to_bytes(&reader.schema()).map_err(external)?,
                hash_keys: presented
                    .keys
                    .iter()
                    .map(|key| encode_expr(key, self))
                    .collect::<DfResult<Vec<_>>>()?,
                constants: presented
                    .constants
                    .iter()
                    .map(|c| {
                        Ok(drove_proto::ShuffleConstant {
                            expr: encode_expr(&c.expr, self)?,
                            uniform: matches!(c.across_partitions, AcrossPartitions::Uniform(_)),
                        })
                    })
                    .collect::<DfResult<Vec<_>>>()?,
                equal: presented
                    .equal
                    .iter()
                    .map(|set| {
                        Ok(drove_proto::ShuffleEquals {
                            exprs: set
                                .iter()
                                .map(|e| encode_expr(e, self))
                                .collect::<DfResult<Vec<_>>>()?,
                        })
                    })
                    .collect::<DfResult<Vec<_>>>()?,
                orderings: presented
                    .orderings
                    .iter()
                    .map(|ordering| {
                        Ok(drove_proto::ShuffleOrdering {
                            exprs: ordering
                                .iter()
                                .map(|s| {
                                    Ok(drove_proto::ShuffleSortExpr {
                                        expr: encode_expr(&s.expr, self)?,
                                        descending: s.options.descending,
                                        nulls_first: s.options.nulls_first,
                                    })
                                })
                                .collect::<DfResult<Vec<_>>>()?,
                        })
                    })
                    .collect::<DfResult<Vec<_>>>()?,
            })
        } else if let Some(text) = node.downcast_ref::<TextSourceExec>() {
            drove_node::Node::TextSource(drove_proto::TextSourceNode {
                files: text.files().to_vec(),
            })
        } else if let Some(map) = node.downcast_ref::<MapExec>() {
            drove_node::Node::Map(drove_proto::MapNode {
                job: map.job_name().to_string(),
                combine: map.combine(),
                source_name: map.source_name().to_string(),
                args: map.args().clone().into_iter().collect(),
            })
        } else if let Some(reduce) = node.downcast_ref::<ReduceExec>() {
            let output = reduce.output();
            drove_node::Node::Reduce(drove_proto::ReduceNode {
                job: reduce.job_name().to_string(),
                output_dir: output.dir.clone(),
                output_format: output.format.name().to_string(),
                token: output.token.clone(),
                args: reduce.args().clone().into_iter().collect(),
            })
        } else {
            return Err(DataFusionError::NotImplemented(format!(
                "drove cannot send the plan node {} to workers",
                node.name()
            )));
        };
        DroveNode {
            node: Some(encoded),
        }
        .encode(buf)
        .map_err(|e| DataFusionError::Internal(format!("encoding a drove plan node: {e}")))
    }
}

/// A physical plan as datafusion-proto bytes.
pub fn plan_to_bytes(plan: Arc<dyn ExecutionPlan>) -> crate::Result<Vec<u8>> {
    Ok(
        datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(plan, &DroveCodec)?
            .to_vec(),
    )
}

/// A physical plan from datafusion-proto bytes. Malformed bytes are an error, even
/// those that make datafusion-proto panic.
pub fn plan_from_bytes(bytes: &[u8], ctx: &TaskContext) -> crate::Result<Arc<dyn ExecutionPlan>> {
    check_embedded_ipc(bytes, 0).map_err(|e| malformed("physical", e))?;
    decode_unpanicked(|| {
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
            bytes,
            ctx,
            &DroveCodec,
        )
    })
    .map_err(|panic| malformed("physical", format!("datafusion-proto panicked: {panic}")))?
    .map_err(crate::Error::from)
}

/// A client's logical plan from datafusion-proto bytes, with cached tables decoded by
/// `codec`. Malformed bytes are an error, even those that make datafusion-proto panic.
pub fn logical_plan_from_bytes(
    bytes: &[u8],
    ctx: &TaskContext,
    codec: &CacheCodec,
) -> crate::Result<LogicalPlan> {
    check_embedded_ipc(bytes, 0).map_err(|e| malformed("logical", e))?;
    decode_unpanicked(|| {
        datafusion_proto::bytes::logical_plan_from_bytes_with_extension_codec(bytes, ctx, codec)
    })
    .map_err(|panic| malformed("logical", format!("datafusion-proto panicked: {panic}")))?
    .map_err(crate::Error::from)
}

fn malformed(kind: &str, problem: String) -> crate::Error {
    crate::Error::DataFusion(DataFusionError::Plan(format!(
        "the {kind} plan's bytes are malformed: {problem}"
    )))
}

/// Deepest nesting of protobuf messages walked: prost decodes no deeper.
const PROTO_DEPTH_MAX: usize = 100;

/// Checks the Arrow IPC streams a plan's protobuf carries (an in-memory table's
/// batches) with [`check_ipc_stream`]. The message is walked without its schema: every
/// length-delimited field is checked as IPC and, as far as it parses as a message,
/// walked in turn.
fn check_embedded_ipc(mut bytes: &[u8], depth: usize) -> Result<(), String> {
    if depth > PROTO_DEPTH_MAX {
        return Ok(());
    }
    // Bytes that stop parsing as a message end the walk: prost refuses them anyway, or
    // they were no message.
    while let Some(key) = read_varint(&mut bytes) {
        let skip = match key & 7 {
            0 => read_varint(&mut bytes).map(|_| 0),
            1 => Some(8),
            5 => Some(4),
            2 => {
                let Some(len) = read_varint(&mut bytes).and_then(|l| usize::try_from(l).ok())
                else {
                    return Ok(());
                };
                let Some(value) = bytes.get(..len) else {
                    return Ok(());
                };
                check_ipc_stream(value)?;
                check_embedded_ipc(value, depth + 1)?;
                Some(len)
            }
            _ => None,
        };
        match skip.and_then(|n| bytes.get(n..)) {
            Some(rest) => bytes = rest,
            None => return Ok(()),
        }
    }
    Ok(())
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if *b < 0x80 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Refuses bytes that read as an Arrow IPC stream with a message whose body is longer
/// than the bytes that follow it. arrow-ipc's stream reader allocates a body's claimed
/// length before reading it, so such bytes could abort the process on a failed
/// allocation. Bytes that are no IPC stream pass: they are another field's.
fn check_ipc_stream(mut bytes: &[u8]) -> Result<(), String> {
    const CONTINUATION: [u8; 4] = [0xff; 4];
    loop {
        // As arrow-ipc reads a message: an optional continuation marker, the metadata's
        // length (0 ends the stream), the metadata (a flatbuffer), the body.
        let Some((&prefix, rest)) = bytes.split_first_chunk::<4>() else {
            return Ok(());
        };
        let (len, rest) = if prefix == CONTINUATION {
            match rest.split_first_chunk::<4>() {
                Some((&len, rest)) => (len, rest),
                None => return Ok(()),
            }
        } else {
            (prefix, rest)
        };
        let meta_len = match usize::try_from(i32::from_le_bytes(len)) {
            Ok(n) if n > 0 && n <= rest.len() => n,
            _ => return Ok(()),
        };
        let Ok(message) = arrow::ipc::root_as_message(&rest[..meta_len]) else {
            return Ok(());
        };
        let available = rest.len() - meta_len;
        let claimed = message.bodyLength();
        match usize::try_from(claimed) {
            Ok(body) if body <= available => bytes = &rest[meta_len + body..],
            _ => {
                return Err(format!(
                    "an Arrow IPC message in it claims a body of {claimed} bytes where {available} follow"
                ));
            }
        }
    }
}
