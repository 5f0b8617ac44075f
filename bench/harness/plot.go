package harness

import (
	"fmt"
	"os"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// WritePlot draws latency percentiles per backend into a PNG at path: the
// uncontended Acquire+Release latency on the left and the contended
// hand-off gap on the right, p50 to p99.9 on a log scale.
func (r *Report) WritePlot(path string) error {
	left, err := r.percentilePlot(Uncontended, "uncontended: Acquire+Release latency",
		func(x *Result) *Percentiles { return &x.Latency })
	if err != nil {
		return err
	}
	right, err := r.percentilePlot(Contended, "contended: hand-off gap (release -> next holder)",
		func(x *Result) *Percentiles { return x.Handoff })
	if err != nil {
		return err
	}
	const w, h = 28 * vg.Centimeter, 12 * vg.Centimeter
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{
		Rows:      1,
		Cols:      2,
		PadX:      vg.Centimeter,
		PadTop:    vg.Millimeter * 3,
		PadBottom: vg.Millimeter * 3,
		PadLeft:   vg.Millimeter * 3,
		PadRight:  vg.Millimeter * 3,
	}
	plots := [][]*plot.Plot{{left, right}}
	canvases := plot.Align(plots, tiles, dc)
	left.Draw(canvases[0][0])
	right.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var plotQuantiles = []struct {
	label string
	get   func(*Percentiles) time.Duration
}{
	{"p50", func(p *Percentiles) time.Duration { return p.P50 }},
	{"p90", func(p *Percentiles) time.Duration { return p.P90 }},
	{"p99", func(p *Percentiles) time.Duration { return p.P99 }},
	{"p99.9", func(p *Percentiles) time.Duration { return p.P999 }},
}

// minPlotMicros keeps zero gaps (early hand-offs) on a log axis.
const minPlotMicros = 0.1

func (r *Report) percentilePlot(
	scenario, title string,
	get func(*Result) *Percentiles,
) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = "µs (log scale)"
	p.X.Label.Text = "percentile"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	var ticks []plot.Tick
	for i, q := range plotQuantiles {
		ticks = append(ticks, plot.Tick{Value: float64(i), Label: q.label})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min, p.X.Max = -0.2, float64(len(plotQuantiles)-1)+0.2
	p.Legend.Top = true
	p.Legend.Left = true
	var args []any
	for i := range r.Results {
		x := &r.Results[i]
		if x.Scenario != scenario {
			continue
		}
		pc := get(x)
		if pc == nil {
			continue
		}
		pts := make(plotter.XYs, len(plotQuantiles))
		for j, q := range plotQuantiles {
			us := float64(q.get(pc)) / 1e3
			if us < minPlotMicros {
				us = minPlotMicros
			}
			pts[j] = plotter.XY{X: float64(j), Y: us}
		}
		args = append(args, x.Backend, pts)
	}
	if len(args) == 0 {
		p.Title.Text += " (not run)"
		p.Y.Min, p.Y.Max = 1, 10 // a log axis needs a positive range
		return p, nil
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return nil, fmt.Errorf("plot %s: %w", scenario, err)
	}
	return p, nil
}
