//! Walks a module's tensors by path (`layer1.0.conv2.paths.0.conv.weight`), the names that
//! checkpoints use.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor, TensorData};

/// What a tensor is, which decides how it may be initialised or converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// Convolution or linear weight.
    Weight,
    /// Convolution or linear bias.
    Bias,
    /// BatchNorm scale.
    NormWeight,
    /// BatchNorm shift.
    NormBias,
    /// BatchNorm running mean (non-trainable).
    RunningMean,
    /// BatchNorm running variance (non-trainable).
    RunningVar,
}

impl TensorRole {
    fn classify(owner: &str, leaf: &str) -> TensorRole {
        let norm = owner.ends_with("BatchNorm2d");
        match (norm, leaf) {
            (true, "weight") => TensorRole::NormWeight,
            (true, "bias") => TensorRole::NormBias,
            (true, "running_mean") => TensorRole::RunningMean,
            (true, "running_var") => TensorRole::RunningVar,
            (_, "bias") => TensorRole::Bias,
            _ => TensorRole::Weight,
        }
    }

    /// Whether an optimiser trains it.
    pub fn trainable(&self) -> bool {
        !matches!(self, TensorRole::RunningMean | TensorRole::RunningVar)
    }
}

/// One named tensor of a module.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Checkpoint key.
    pub path: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Role.
    pub role: TensorRole,
}

/// Tracks the dotted key while burn walks the module tree. Enum variants (such as
/// [`crate::blocks::Block`]'s) are transparent: they do not appear in paths.
#[derive(Default)]
struct PathTracker {
    segments: Vec<String>,
    pushed: Vec<bool>,
    owners: Vec<String>,
}

impl PathTracker {
    /// Call from `enter_module`.
    fn enter(&mut self, name: &str, container_type: &str) {
        let keep = !container_type.starts_with("Enum:");
        if keep {
            self.segments.push(name.to_string());
        }
        self.pushed.push(keep);
        self.owners.push(container_type.to_string());
    }

    /// Call from `exit_module`.
    fn exit(&mut self) {
        if self.pushed.pop() == Some(true) {
            self.segments.pop();
        }
        self.owners.pop();
    }

    /// Key and role of the tensor being visited.
    fn current(&self) -> (String, TensorRole) {
        let leaf = self.segments.last().map(String::as_str).unwrap_or("");
        let owner = self.owners.last().map(String::as_str).unwrap_or("");
        (self.segments.join("."), TensorRole::classify(owner, leaf))
    }
}

/// Reads every float tensor of a module (parameters and BN running statistics) with its key.
pub trait KeyedVisitor {
    /// Called for each tensor, in visiting order.
    fn visit<const D: usize>(&mut self, key: String, role: TensorRole, param: &Param<Tensor<D>>);
}

/// Rewrites every float tensor of a module with its key in hand.
pub trait KeyedMapper {
    /// Called for each tensor, in visiting order; returns its replacement.
    fn map<const D: usize>(
        &mut self,
        key: String,
        role: TensorRole,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>>;
}

/// burn's visitor and mapper, with the key tracked for the keyed ones.
struct Keyed<'a, T> {
    tracker: PathTracker,
    inner: &'a mut T,
}

impl<T: KeyedVisitor> ModuleVisitor for Keyed<'_, T> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.tracker.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (key, role) = self.tracker.current();
        self.inner.visit(key, role, param);
    }
}

impl<T: KeyedMapper> ModuleMapper for Keyed<'_, T> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.tracker.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.tracker.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (key, role) = self.tracker.current();
        self.inner.map(key, role, param)
    }
}

/// Walks `module`'s float tensors with their checkpoint keys.
pub fn visit_keyed<M: Module, V: KeyedVisitor>(module: &M, visitor: &mut V) {
    module.visit(&mut Keyed {
        tracker: PathTracker::default(),
        inner: visitor,
    });
}

/// Maps `module`'s float tensors with their checkpoint keys.
pub fn map_keyed<M: Module, T: KeyedMapper>(module: M, mapper: &mut T) -> M {
    module.map(&mut Keyed {
        tracker: PathTracker::default(),
        inner: mapper,
    })
}

/// Lists keys and shapes without touching values (parameters stay lazily uninitialised: burn's
/// visit would initialise them on `shape()`, so the lazy shape is read).
struct Lister {
    out: Vec<NamedTensor>,
}

impl KeyedVisitor for Lister {
    fn visit<const D: usize>(&mut self, path: String, role: TensorRole, param: &Param<Tensor<D>>) {
        self.out.push(NamedTensor {
            path,
            shape: param.lazy_shape().dims::<D>().to_vec(),
            role,
        });
    }
}

/// Every float tensor of `module` (parameters and BN running statistics), in visiting order.
/// Cheap: reads shapes only.
pub fn named_tensors<M: Module>(module: &M) -> Vec<NamedTensor> {
    let mut lister = Lister { out: Vec::new() };
    visit_keyed(module, &mut lister);
    lister.out
}

/// Produces new values for a tensor: `Some(values)` replaces it (row-major, the tensor's shape),
/// `None` keeps it.
pub trait TensorSource {
    /// New values for `tensor`, if any.
    fn values(&mut self, tensor: &NamedTensor) -> Option<Vec<f32>>;
}

struct Replacer<'a, S: TensorSource> {
    source: &'a mut S,
}

impl<S: TensorSource> KeyedMapper for Replacer<'_, S> {
    fn map<const D: usize>(
        &mut self,
        path: String,
        role: TensorRole,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        let shape = param.shape().dims::<D>().to_vec();
        let named = NamedTensor { path, shape, role };
        match self.source.values(&named) {
            Some(values) => param.map(|old| {
                let device = old.device();
                let grad = old.is_require_grad();
                let new =
                    Tensor::<D>::from_data(TensorData::new(values, named.shape.clone()), &device);
                if grad {
                    new.require_grad()
                } else {
                    new
                }
            }),
            None => param,
        }
    }
}

/// Replaces tensors of `module` with values from `source`.
pub fn replace_tensors<M: Module, S: TensorSource>(module: M, source: &mut S) -> M {
    map_keyed(module, &mut Replacer { source })
}

/// A named tensor's current value and, when gradients are given, its gradient, both flattened.
pub struct FlatTensor {
    /// Key, shape and role.
    pub named: NamedTensor,
    /// Row-major values.
    pub value: Tensor<1>,
    /// Row-major gradient, when `grads` held one.
    pub grad: Option<Tensor<1>>,
}

struct Collector<'a> {
    grads: Option<&'a Gradients>,
    out: Vec<FlatTensor>,
}

impl KeyedVisitor for Collector<'_> {
    fn visit<const D: usize>(&mut self, path: String, role: TensorRole, param: &Param<Tensor<D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        let n = shape.iter().product::<usize>();
        let grad = self
            .grads
            .and_then(|g| value.grad(g))
            .map(|g| g.reshape([n]));
        self.out.push(FlatTensor {
            named: NamedTensor { path, shape, role },
            value: value.reshape([n]),
            grad,
        });
    }
}

/// Every float tensor of `module` with its value and, given `grads`, its gradient.
pub fn flat_tensors<M: Module>(module: &M, grads: Option<&Gradients>) -> Vec<FlatTensor> {
    let mut collector = Collector {
        grads,
        out: Vec::new(),
    };
    visit_keyed(module, &mut collector);
    collector.out
}
