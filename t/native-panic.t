# Rust panics must never take perl down. PAGI_NATIVE_TEST_PANIC (read once,
# at `new`) makes the engine panic in one chosen place: an extern function
# called from Perl (stats), the IO thread itself (io_thread), or a
# connection task (request), an accept loop (accept) or the command
# dispatcher (dispatch).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server;    # its import sets the alarm bounding this file
use PAGI::Test::Engine qw(started_engine pump_until take count_kind client read_until
                          read_response get_request);
use PAGI::Server::Native qw(:events);
use File::Temp ();

# Panic messages go to fd 2; keep them out of the test output but show them
# when an assertion fails. Test::More reports on its own copy of STDERR.
my $stderr_log = File::Temp->new;
open my $saved_stderr, '>&', \*STDERR or die "dup STDERR: $!";
open STDERR, '>>', $stderr_log->filename or die "redirect STDERR: $!";
END { open STDERR, '>&', $saved_stderr if $saved_stderr }
sub captured_stderr { open my $fh, '<', $stderr_log->filename or return ''; local $/; <$fh> }

# Builds an engine with the panic switch set only around `new`.
sub panicky {
    my ($mode) = @_;
    return sub { local $ENV{PAGI_NATIVE_TEST_PANIC} = $mode; PAGI::Server::Native->new(@_) };
}

# A full request/response through $s, proving the engine still serves.
sub serves {
    my ($s, $path) = @_;
    my $sock = client($s->{port});
    print {$sock} get_request($path, 'Connection: close');
    pump_until($s, sub { count_kind($_[0], EV_REQUEST) }) or return 'no EV_REQUEST';
    my ($ev) = take($s, EV_REQUEST);
    $s->{engine}->respond_full($ev->[1], 200, [], "served $ev->[2]{path}");
    $s->{engine}->flush;
    my $res = read_response($sock) or return 'no response';
    return $res->{body};
}

subtest 'a panic in stats croaks and perl carries on' => sub {
    my $s = started_engine(build => panicky('stats'));
    my $e = $s->{engine};
    is($ENV{PAGI_NATIVE_TEST_PANIC}, undef, 'the switch is no longer in the environment');

    my $ok = eval { $e->stats; 1 };
    my $error = $@;
    my $next_statement_ran = 1;
    ok(!$ok, 'stats croaks');
    like($error, qr/PAGI::Server::Native::stats: .*panic/i, 'the croak names stats and the panic');
    like($error, qr/PAGI_NATIVE_TEST_PANIC=stats/, 'and carries the panic message');
    ok($next_statement_ran, 'the statement after the croak runs');

    ok(!eval { $e->stats; 1 }, 'a second call croaks the same way (nothing is poisoned)');
    like($@, qr/panic/i, 'with the panic message again');

    is(serves($s, '/after-panic'), 'served /after-panic', 'the engine still serves a request');

    my $plain = PAGI::Server::Native->new;
    ok(eval { $plain->stats; 1 }, 'an engine made without the switch has working stats') or diag $@;

    $e->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'the engine stops cleanly');
};

subtest 'a panic on the IO thread arrives as EV_FATAL' => sub {
    my $s = started_engine(build => panicky('io_thread'));
    ok(pump_until($s, sub { count_kind($_[0], EV_FATAL) }, 5), 'EV_FATAL arrives within 5 s')
        or diag captured_stderr();
    my ($fatal) = take($s, EV_FATAL);
    is($fatal->[1], 0, 'EV_FATAL is engine-wide (id 0)');
    like($fatal->[2], qr/panic/i, 'its message mentions the panic');
    like($fatal->[2], qr/PAGI_NATIVE_TEST_PANIC=io_thread/, 'and carries the panic message');
    ok(eval { $s->{engine}->stats; 1 }, 'stats still answers after the IO thread died') or diag $@;
    ok(eval { undef $s; 1 }, 'destroying the engine after a dead IO thread is fine');
};

subtest 'a panic in a connection task is logged and closes that connection' => sub {
    my $s = started_engine(build => panicky('request'));
    my $e = $s->{engine};
    my $sock = client($s->{port});
    print {$sock} get_request('/boom');

    ok(pump_until($s, sub { count_kind($_[0], EV_LOG) }, 5), 'an EV_LOG arrives') or diag captured_stderr();
    my @logs = take($s, EV_LOG);
    my ($error) = grep { $_->[2] eq 'error' } @logs;
    ok($error, 'at level error') or diag explain \@logs;
    like($error->[3], qr/panic/i, 'mentioning the panic');
    like($error->[3], qr/PAGI_NATIVE_TEST_PANIC=request/, 'with the panic message');

    my ($bytes, $closed) = read_until($sock, sub { 0 }, 3);
    ok($closed, 'the client connection was closed');
    is($bytes, '', 'without any response bytes');
    is(count_kind($s->{events}, EV_REQUEST), 0, 'no request reached Perl');

    # Still here, and the engine's bookkeeping survived the unwinding task.
    ok(pump_until($s, sub { $e->stats->{connections_active} == 0 }), 'the connection is no longer counted as active');
    is($e->stats->{connections_total}, 1, 'connections_total counted it');

    # The engine keeps accepting: a second connection panics the same way.
    my $again = client($s->{port});
    print {$again} get_request('/boom-again');
    ok(pump_until($s, sub { grep { $_->[0] == EV_LOG && $_->[2] eq 'error' } @{ $_[0] } }, 5),
        'a second connection is accepted and logged the same way');
    my (undef, $closed_again) = read_until($again, sub { 0 }, 3);
    ok($closed_again, 'and closed');

    $e->shutdown(0.5);
    ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }), 'the engine stops cleanly');
};

# Panics in the tasks the engine cannot work without: fatal, never a hang.
for my $case (['accept', 'an accept loop', sub { my ($s) = @_; my $c = client($s->{port}); $s->{keep} = $c }],
              ['dispatch', 'the command dispatcher', sub {
                  my ($s) = @_;
                  my $c = client($s->{port});
                  print {$c} get_request('/x');
                  pump_until($s, sub { count_kind($_[0], EV_REQUEST) }, 5);
                  my ($req) = take($s, EV_REQUEST);
                  $s->{engine}->respond_full($req->[1], 200, [], 'x') if $req;
                  $s->{engine}->flush;
                  $s->{keep} = $c;
              }]) {
    my ($mode, $what, $provoke) = @$case;
    subtest "a panic in $what arrives as EV_FATAL" => sub {
        my $s = started_engine(build => panicky($mode));
        $provoke->($s);
        ok(pump_until($s, sub { count_kind($_[0], EV_FATAL) }, 5), 'EV_FATAL arrives within 5 s')
            or diag captured_stderr();
        my ($fatal) = take($s, EV_FATAL);
        like($fatal->[2] // '', qr/\Q$what\E panicked: .*PAGI_NATIVE_TEST_PANIC=$mode/, 'naming the task and the panic');
        $s->{engine}->shutdown(0.5);
        ok(pump_until($s, sub { count_kind($_[0], EV_STOPPED) }, 5), 'and the engine still shuts down');
    };
}

done_testing;
