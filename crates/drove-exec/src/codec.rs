//! The datafusion-proto extension codec for drove's own plan nodes: the shuffle reader
//! and the MapReduce nodes.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use drove_proto::{DroveNode, drove_node};
use prost::Message;

use crate::mapreduce::nodes::{MapExec, OutputFormat, OutputSpec, ReduceExec, TextSourceExec};
use crate::shuffle::{ReadMode, ShuffleReaderExec, schema_from_bytes, schema_to_bytes};

/// Encodes and decodes drove's plan nodes inside datafusion-proto plans.
#[derive(Debug, Default)]
pub struct DroveCodec;

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
        _ctx: &TaskContext,
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
                };
                let schema = schema_from_bytes(&r.schema).map_err(external)?;
                Arc::new(ShuffleReaderExec::new(
                    r.stage_id,
                    mode,
                    r.partitions as usize,
                    schema,
                ))
            }
            drove_node::Node::TextSource(t) => {
                if t.files.is_empty() {
                    return Err(DataFusionError::Internal(
                        "a text source without files".into(),
                    ));
                }
                Arc::new(TextSourceExec::new(
                    t.files.into_iter().map(PathBuf::from).collect(),
                ))
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
                    dir: PathBuf::from(r.output_dir),
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
            };
            drove_node::Node::ShuffleReader(drove_proto::ShuffleReaderNode {
                stage_id: reader.stage(),
                mode: mode as i32,
                partitions: reader.partitions() as u32,
                schema: schema_to_bytes(&reader.schema()).map_err(external)?,
            })
        } else if let Some(text) = node.downcast_ref::<TextSourceExec>() {
            drove_node::Node::TextSource(drove_proto::TextSourceNode {
                files: text
                    .files()
                    .iter()
                    .map(|f| f.to_string_lossy().into_owned())
                    .collect(),
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
                output_dir: output.dir.to_string_lossy().into_owned(),
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

/// A physical plan from datafusion-proto bytes.
pub fn plan_from_bytes(bytes: &[u8], ctx: &TaskContext) -> crate::Result<Arc<dyn ExecutionPlan>> {
    Ok(
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
            bytes,
            ctx,
            &DroveCodec,
        )?,
    )
}
