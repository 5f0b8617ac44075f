package reliability

import (
	"fmt"
	"os"
	"testing"
)

// figures is the fault suite's figures line, printed by TestMain after all
// tests so that it is the last line of the test binary's output.
var figures string

func TestMain(m *testing.M) {
	code := m.Run()
	if figures != "" {
		fmt.Println(figures)
	}
	os.Exit(code)
}
