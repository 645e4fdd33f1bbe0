//! `sknet attention`: the paper's section 4.3 analysis of what the SK selection picks, as CSV,
//! JSON and figures in an output folder.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use sknet::attention::{
    self, AttentionObserver, AttentionReport, AttentionSettings, ImageAttention,
};
use sknet::data::Dataset;
use sknet::device::default_device;
use sknet::infer::{self, Preprocess};
use sknet::plot::{self, LineChart, Series};
use sknet::weights::checkpoint::write_atomic;

use super::args::{check_loader_flags, load_weights, WeightsArgs};
use super::CliError;

/// `sknet attention` arguments.
#[derive(Debug, clap::Args)]
pub struct AttentionArgs {
    /// The weights.
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// A labelled image folder or CIFAR binary folder, or image files.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Analyse only the last N images of each class (the validation split of `sknet train`).
    #[arg(long)]
    pub val_per_class: Option<usize>,
    /// Object enlargements: center-crop 1/scale of each image, resized back to the input.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,1.5,2",
        allow_negative_numbers = true
    )]
    pub scales: Vec<f64>,
    /// Units to analyse, by the paper's name (SK_2_1, ...) or module path (default: all).
    #[arg(long, value_delimiter = ',')]
    pub units: Vec<String>,
    /// Folder for the CSV, JSON and PNG files.
    #[arg(long, short = 'o', default_value = "attention")]
    pub output: PathBuf,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Data loading threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Writes the per-image CSV as results come, and shows progress on stderr.
struct Recorder {
    rows: csv::Writer<BufWriter<File>>,
    scales: Vec<f64>,
    classes: Vec<String>,
    predicted_names: Vec<String>,
    /// The per-image table printed for a list of files.
    table: Option<Vec<String>>,
    bar: ProgressBar,
    error: Option<std::io::Error>,
}

impl AttentionObserver for Recorder {
    fn on_progress(&mut self, done: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
    }

    fn on_image(&mut self, image: &ImageAttention<'_>) {
        let label = image
            .label
            .map(|l| self.classes[l].clone())
            .unwrap_or_default();
        let predicted = self
            .predicted_names
            .get(image.predicted)
            .cloned()
            .unwrap_or_else(|| image.predicted.to_string());
        let mut row = vec![
            image.image.clone(),
            self.scales[image.scale].to_string(),
            label,
            predicted.clone(),
        ];
        row.extend(image.differences.iter().map(|d| format!("{d:.6}")));
        if let Some(table) = &mut self.table {
            let diffs: Vec<String> = image
                .differences
                .iter()
                .map(|d| format!("{d:>9.4}"))
                .collect();
            table.push(format!(
                "{:<32} {:>5}x  {:<14} {}",
                image.image,
                self.scales[image.scale],
                predicted,
                diffs.join(" ")
            ));
        }
        if self.error.is_none() {
            if let Err(e) = self.rows.write_record(&row) {
                self.error = Some(e.into());
            }
        }
    }
}

/// Parses the data arguments: one folder (labelled), or image files (unlabelled).
fn open_data(args: &AttentionArgs) -> Result<(Dataset, Vec<usize>), CliError> {
    if let [root] = args.data.as_slice() {
        if root.is_dir() {
            let data = Dataset::open(root)?;
            let indices = match args.val_per_class {
                Some(n) => data.split(n)?.1,
                None => (0..data.len()).collect(),
            };
            return Ok((data, indices));
        }
    }
    for path in &args.data {
        let message = if path.is_dir() {
            "give one folder, or image files, not both"
        } else if !path.is_file() {
            "not a file or folder"
        } else {
            continue;
        };
        return Err(CliError::Argument {
            arg: format!("--data {}", path.display()),
            message: message.into(),
        });
    }
    if args.val_per_class.is_some() {
        return Err(CliError::Argument {
            arg: "--val-per-class".into(),
            message: "needs a labelled folder as --data, not image files".into(),
        });
    }
    let data = Dataset::from_files(&args.data);
    let indices = (0..data.len()).collect();
    Ok((data, indices))
}

/// Runs the analysis and writes its files; returns the summary for stdout.
pub fn run(args: AttentionArgs) -> Result<String, CliError> {
    check_loader_flags(args.batch, args.workers)?;
    let device = default_device();
    let loaded = load_weights(&args.weights, &device)?;
    let model = loaded.model.fold_batchnorm();
    let all = attention::units(&model);
    let selected = attention::select_units(&all, &args.units)?;
    let pre = loaded
        .preprocess
        .unwrap_or_else(|| Preprocess::imagenet(model.config.default_input));
    attention::check_scales(&args.scales, pre.size)?;
    let (data, indices) = open_data(&args)?;
    let labelled = data.is_labelled();
    if !labelled {
        eprintln!(
            "the images are unlabelled: per-image and overall results only, no per-class ones"
        );
    }
    let predicted_names = infer::class_names(loaded.classes, model.config.num_classes)?;
    let out = &args.output;
    std::fs::create_dir_all(out).map_err(|e| CliError::Argument {
        arg: format!("--output {}", out.display()),
        message: format!("cannot create the folder: {e}"),
    })?;
    let rows_path = out.join("per_image.csv");
    let rows_tmp = out.join(format!(".per_image.csv.tmp-{}", std::process::id()));
    let file = File::create(&rows_tmp).map_err(|e| io_error(&rows_tmp, e))?;
    let mut rows = csv::Writer::from_writer(BufWriter::new(file));
    let names: Vec<String> = selected.iter().map(|&u| all[u].name.clone()).collect();
    let mut header = vec!["image", "scale", "label", "predicted"];
    header.extend(names.iter().map(String::as_str));
    rows.write_record(&header)
        .map_err(|e| io_error(&rows_tmp, e.into()))?;
    let bar = ProgressBar::new((indices.len() * args.scales.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("attention [{bar:30}] {pos}/{len} images x scales, eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut recorder = Recorder {
        rows,
        scales: args.scales.clone(),
        classes: data.classes.clone(),
        predicted_names,
        table: (!labelled).then(Vec::new),
        bar,
        error: None,
    };
    let settings = AttentionSettings {
        scales: args.scales.clone(),
        units: selected,
        batch: args.batch,
        workers: args.workers,
    };
    let result = attention::analyse(
        &model,
        Arc::new(data),
        &indices,
        &pre,
        &settings,
        &mut recorder,
        &device,
    );
    recorder.bar.finish_and_clear();
    let finished = match (result, recorder.error.take()) {
        (Ok(report), None) => recorder
            .rows
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&rows_tmp, &rows_path))
            .map(|()| report)
            .map_err(|e| io_error(&rows_path, e)),
        (Ok(_), Some(e)) => Err(io_error(&rows_path, e)),
        (Err(e), _) => Err(CliError::Attention(e)),
    };
    let report = match finished {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_file(&rows_tmp);
            return Err(e);
        }
    };
    for image in &report.skipped_images {
        eprintln!("warning: skipping {}: {}", image.image, image.reason);
    }
    write_outputs(&report, out)?;
    let mut text = if args.json {
        serde_json::to_string_pretty(&report).expect("report serializes") + "\n"
    } else {
        report.summary()
    };
    if let (Some(table), false) = (&recorder.table, args.json) {
        text.push_str(&format!(
            "\nper image (mean attention difference per unit):\n{:<32} {:>6}  {:<14} {}\n",
            "image",
            "scale",
            "predicted",
            names
                .iter()
                .map(|n| format!("{n:>9}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        for line in table {
            text.push_str(line);
            text.push('\n');
        }
    }
    if !args.json {
        text.push_str(&format!("\nwritten to {}\n", out.display()));
    }
    Ok(text)
}

fn io_error(path: &Path, source: std::io::Error) -> CliError {
    CliError::Weights(sknet::weights::WeightsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// CSV text from rows of cells.
fn csv_bytes(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing into memory cannot fail.
    let _ = w.write_record(header);
    for row in rows {
        let _ = w.write_record(&row);
    }
    w.into_inner().unwrap_or_default()
}

/// The CSV tables, summary.json and the figures.
fn write_outputs(report: &AttentionReport, out: &Path) -> Result<(), CliError> {
    let write = |name: &str, bytes: &[u8]| write_atomic(&out.join(name), bytes);
    let scale = |s: f64| format!("{s}");
    let mut rows = Vec::new();
    for (si, &s) in report.scales.iter().enumerate() {
        for (u, unit) in report.units.iter().enumerate() {
            rows.push(vec![
                unit.name.clone(),
                scale(s),
                format!("{:.6}", report.mean_difference[si][u]),
            ]);
        }
    }
    write(
        "differences.csv",
        &csv_bytes(&["unit", "scale", "mean_difference"], rows),
    )?;
    let max_branches = report
        .units
        .iter()
        .map(|u| u.kernels.len())
        .max()
        .unwrap_or(0);
    let mut header = vec!["unit".to_string(), "scale".into(), "channel".into()];
    header.extend((0..max_branches).map(|m| format!("branch_{m}")));
    let mut rows = Vec::new();
    for (si, &s) in report.scales.iter().enumerate() {
        for (u, unit) in report.units.iter().enumerate() {
            for c in 0..unit.channels {
                let mut row = vec![unit.name.clone(), scale(s), c.to_string()];
                row.extend(
                    (0..max_branches).map(|m| match report.branch_means[si][u].get(m) {
                        Some(means) => format!("{:.6}", means[c]),
                        None => String::new(),
                    }),
                );
                rows.push(row);
            }
        }
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    write("branch_means.csv", &csv_bytes(&header, rows))?;
    if let (Some(classes), Some(diffs), Some(images)) = (
        &report.classes,
        &report.class_differences,
        &report.class_images,
    ) {
        let mut rows = Vec::new();
        for (si, &s) in report.scales.iter().enumerate() {
            for (u, unit) in report.units.iter().enumerate() {
                for (c, class) in classes.iter().enumerate() {
                    rows.push(vec![
                        unit.name.clone(),
                        scale(s),
                        class.clone(),
                        images[c].to_string(),
                        diffs[si][u][c]
                            .map(|d| format!("{d:.6}"))
                            .unwrap_or_default(),
                    ]);
                }
            }
        }
        write(
            "per_class.csv",
            &csv_bytes(
                &["unit", "scale", "class", "images", "mean_difference"],
                rows,
            ),
        )?;
    }
    write(
        "summary.json",
        (serde_json::to_string_pretty(report).expect("report serializes") + "\n").as_bytes(),
    )?;
    for (name, charts, panel) in figures(report) {
        let png = plot::png(&charts, panel).map_err(|e| CliError::Argument {
            arg: format!("--output {}", out.display()),
            message: format!("{name}: {e}"),
        })?;
        write(&name, &png)?;
    }
    Ok(())
}

/// A line per unit, labelled with its name.
fn unit_series(report: &AttentionReport, points: impl Fn(usize) -> Vec<(f64, f64)>) -> Vec<Series> {
    report
        .units
        .iter()
        .enumerate()
        .map(|(u, unit)| Series {
            label: unit.name.clone(),
            points: points(u),
        })
        .collect()
}

/// The figures: the difference against scale (Figure 3c), each unit's channel-wise weight of
/// its largest kernel (Figure 3a/3b), and the per-class differences at each scale (Figure 4).
fn figures(report: &AttentionReport) -> Vec<(String, Vec<LineChart>, [u32; 2])> {
    let mut out = Vec::new();
    let by_scale = LineChart {
        title: "Mean attention difference against object size".into(),
        x_label: "object enlargement (scale)".into(),
        y_label: "largest minus smallest kernel weight".into(),
        series: unit_series(report, |u| {
            report
                .scales
                .iter()
                .zip(&report.mean_difference)
                .map(|(&s, d)| (s, d[u]))
                .collect()
        }),
        markers: true,
        ..Default::default()
    };
    out.push(("difference.png".to_string(), vec![by_scale], [760, 520]));
    for (u, unit) in report.units.iter().enumerate() {
        let chart = LineChart {
            title: format!(
                "{}: weight of the {} kernel per channel",
                unit.name, unit.kernels[unit.largest]
            ),
            x_label: "channel index".into(),
            y_label: "mean attention weight".into(),
            series: report
                .scales
                .iter()
                .zip(&report.branch_means)
                .map(|(&s, means)| Series {
                    label: format!("{s}x"),
                    points: means[u][unit.largest]
                        .iter()
                        .enumerate()
                        .map(|(c, &v)| (c as f64, v))
                        .collect(),
                })
                .collect(),
            ..Default::default()
        };
        out.push((
            format!("channels_{}.png", unit.name),
            vec![chart],
            [900, 420],
        ));
    }
    if let (Some(classes), Some(diffs)) = (&report.classes, &report.class_differences) {
        for (si, &s) in report.scales.iter().enumerate() {
            let chart = LineChart {
                title: format!("Mean attention difference per class, objects at {s}x"),
                x_label: "class".into(),
                y_label: "largest minus smallest kernel weight".into(),
                series: unit_series(report, |u| {
                    diffs[si][u]
                        .iter()
                        .enumerate()
                        .filter_map(|(c, d)| d.map(|d| (c as f64, d)))
                        .collect()
                }),
                categories: Some(classes.clone()),
                markers: classes.len() <= 50,
                ..Default::default()
            };
            out.push((format!("per_class_{s}x.png"), vec![chart], [1000, 520]));
        }
    }
    out
}
