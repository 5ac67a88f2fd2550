# Limits and timeouts of the HTTP/1.1 path (issue 3, PAGI-SPEC 5.1-5.3):
# slowloris against header_timeout + max_connections, the 503 at capacity,
# keep-alive idle timeout, header/body/request timeouts, and the defaults.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done complete_responses);
use PAGI::Server;
use PAGI::Server::Config;
use Future::AsyncAwait;
use IO::Async::Stream;
use IO::Async::Timer::Periodic;
use IO::Socket::IP;
use Socket ();
use Time::HiRes ();

$SIG{PIPE} = 'IGNORE';

my $loop = loop();
sub now { Time::HiRes::time() }

my @servers;    # every server started here, stopped at the latest in END
my @timers;     # long app timers, cancelled before servers stop
END {
    $_->cancel for grep { !$_->is_ready } @timers;
    for my $s (@servers) { eval { stop_server($s) if $s->loop } }
}

sub serve {
    my (%args) = @_;
    my ($server, $port) = start_server(%args);
    push @servers, $server;
    return ($server, $port);
}

sub done_server {
    my ($server) = @_;
    @servers = grep { $_ != $server } @servers;
    stop_server($server);
}

# An http app answering 200 "ok PATH", counting its calls; lifespan declined.
sub counting_app {
    my ($calls) = @_;
    return async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
        push @$calls, $scope->{path};
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => "ok $scope->{path}" });
    };
}

sub get_req { my ($path, @extra) = @_; "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\n" . join('', map { "$_\r\n" } @extra) . "\r\n" }

my $BODY_503 = "503 Service Unavailable - Server at capacity\n";

# The exact 503 of PAGI-SPEC 5.1.
sub check_503 {
    my ($bytes, $what) = @_;
    my @r = parse_responses($bytes);
    is(scalar @r, 1, "$what: exactly one response") or diag($bytes);
    my $r = $r[0] // {};
    is($r->{status}, 503, "$what: status 503");
    is($r->{reason}, 'Service Unavailable', "$what: reason phrase");
    is($r->{header}{'retry-after'}, '5', "$what: retry-after: 5");
    is(lc($r->{header}{connection} // ''), 'close', "$what: connection: close");
    like($r->{header}{'content-type'} // '', qr{^text/plain\b}, "$what: text/plain");
    is($r->{header}{'content-length'}, length $BODY_503, "$what: content-length of the body");
    is($r->{body}, $BODY_503, "$what: body says the server is at capacity");
    ok(!$r->{incomplete}, "$what: response complete");
}

subtest 'slowloris: 200 dripping attackers, header_timeout 2, max_connections 50' => sub {
    my @calls;
    my $header_timeout = 2;
    my ($server, $port) = serve(app => counting_app(\@calls), header_timeout => $header_timeout, max_connections => 50);

    # The normal client is connected (and served once) before the attack.
    my $client = open_conn($port);
    $client->write(get_req('/n/0'));
    my $first = eval { $client->read_until(responses_done(1), 5)->get };
    ok($first && $first =~ m{\AHTTP/1\.1 200 }, 'the normal client is served before the attack') or diag($@);
    $client->take;

    my @attackers;
    my $t_attack = now();
    for my $i (1 .. 200) {
        my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM())
            or die "attacker $i cannot connect: $@";
        my $a = { i => $i, connected_at => now(), buf => '' };
        my $stream;
        $stream = IO::Async::Stream->new(
            handle  => $sock,
            on_read => sub {
                my (undef, $in, $eof) = @_;
                $a->{buf} .= $$in;
                $$in = '';
                return 0;
            },
            on_read_eof    => sub { $a->{eof_at} //= now(); $stream->close_now },
            on_read_error  => sub { $a->{eof_at} //= now(); $a->{error} = $_[1]; $stream->close_now },
            on_write_error => sub { },
        );
        $a->{stream} = $stream;
        $loop->add($stream);
        $stream->write("GET /attack/$i HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        push @attackers, $a;
    }
    # One header byte every 0.5 s on every attacker still open.
    my $drip = IO::Async::Timer::Periodic->new(
        interval => 0.5,
        on_tick  => sub { $_->{stream}->write('a') for grep { !$_->{eof_at} && $_->{stream}->loop } @attackers },
    );
    $drip->start;
    $loop->add($drip);

    # Meanwhile the normal client makes 100 sequential requests on its connection.
    my $client_f = (async sub {
        my @errors;
        for my $n (1 .. 100) {
            $client->write(get_req("/n/$n"));
            my $got = eval { await $client->read_until(responses_done(1), 5); 1 };
            unless ($got) { push @errors, "request $n: $@"; last }
            my ($r) = parse_responses($client->take);
            push @errors, "request $n: status " . ($r->{status} // 'none') unless ($r->{status} // 0) == 200;
            push @errors, "request $n: body '$r->{body}'" unless ($r->{body} // '') eq "ok /n/$n";
            await $loop->delay_future(after => 0.03);
        }
        return \@errors;
    })->();

    my $all_closed = wait_for(sub { !grep { !$_->{eof_at} } @attackers }, $header_timeout + 8);
    my $errors = eval { $client_f->get } // ["client failed: $@"];
    $loop->remove($drip);

    ok($all_closed, 'every attacker connection was closed by the server')
        or diag(scalar(grep { !$_->{eof_at} } @attackers) . ' still open');
    is_deeply($errors, [], 'the normal client completed 100 requests on its keep-alive connection without error');
    ok(!$client->is_eof, 'the normal client connection is still open');

    my @refused  = grep { $_->{buf} =~ m{\AHTTP/1\.1 503 } } @attackers;
    my @admitted = grep { $_->{buf} !~ m{\AHTTP/1\.1 503 } } @attackers;
    is(scalar @admitted, 49, '49 attackers were admitted (50 minus the normal client)');
    is(scalar @refused, 151, 'the other 151 got 503');
    is(scalar(grep { length $_->{buf} } @admitted), 0, 'admitted attackers got no bytes at all');
    check_503($refused[0]{buf}, 'first refused attacker') if @refused;
    is(scalar(grep { $_->{buf} ne $refused[0]{buf} } @refused), 0, 'every refused attacker got the same 503')
        if @refused;

    my @late = grep { !$_->{eof_at} || $_->{eof_at} - $_->{connected_at} > $header_timeout + 2 } @admitted;
    is(scalar @late, 0, 'each admitted attacker was closed within header_timeout + 2 s of connecting')
        or diag(join ', ', map { sprintf '#%d after %s', $_->{i}, $_->{eof_at} ? sprintf('%.2fs', $_->{eof_at} - $_->{connected_at}) : 'never' } @late);
    my @early = grep { $_->{eof_at} && $_->{eof_at} - $_->{connected_at} < $header_timeout - 0.5 } @admitted;
    is(scalar @early, 0, 'no admitted attacker was closed long before header_timeout (dripping does not matter either way)')
        or diag(join ', ', map { sprintf '#%d after %.2fs', $_->{i}, $_->{eof_at} - $_->{connected_at} } @early);
    my @slow_503 = grep { !$_->{eof_at} || $_->{eof_at} - $_->{connected_at} > 3 } @refused;
    is(scalar @slow_503, 0, 'refused attackers were closed promptly after the 503');
    is(scalar(grep { m{^/attack/} } @calls), 0, 'the app never saw an attacker request');
    is(scalar(grep { m{^/n/} } @calls), 101, 'the app saw all 101 normal requests');

    # Capacity recovers: a new connection is served once the attackers are gone.
    ok(wait_for(sub { $server->connection_count <= 1 }, 5), 'connection count back to the normal client');
    my $after = eval { raw_exchange($port, get_req('/after', 'Connection: close'), timeout => 5)->get } // '';
    like($after, qr{\AHTTP/1\.1 200 }, 'a new client is served after the attack');

    $client->close;
    $_->{stream}->close_now for grep { $_->{stream}->loop } @attackers;
    done_server($server);
};

subtest 'max_connections 2: the third connection gets the exact 503 and is closed' => sub {
    my @calls;
    my ($server, $port) = serve(app => counting_app(\@calls), max_connections => 2);
    my @conns = map { open_conn($port) } 1 .. 2;
    for my $i (0, 1) {
        $conns[$i]->write(get_req("/c$i"));
        my $ok = eval { $conns[$i]->read_until(responses_done(1), 5)->get; 1 };
        ok($ok, "connection $i served") or diag($@);
        $conns[$i]->take;
    }
    is($server->connection_count, 2, 'two connections open');

    my $t0 = now();
    my $third = eval { raw_exchange($port, get_req('/third'), timeout => 5)->get };
    ok(defined $third, 'the third connection was closed by the server (EOF)') or diag($@);
    cmp_ok(now() - $t0, '<', 4, 'and promptly');
    check_503($third // '', 'third connection');
    like($third // '', qr{\AHTTP/1\.1 503 Service Unavailable\r\n}, 'status line exactly "HTTP/1.1 503 Service Unavailable"');
    ok(!grep({ $_ eq '/third' } @calls), 'the app never saw the refused request');

    # Existing connections are unaffected.
    $conns[0]->write(get_req('/c0-again'));
    my $again = eval { $conns[0]->read_until(responses_done(1), 5)->get } // '';
    like($again, qr{\AHTTP/1\.1 200 }, 'an existing connection is still served at capacity');
    $conns[0]->take;

    # One closes; a new one is admitted.
    $conns[1]->close;
    ok(wait_for(sub { $server->connection_count < 2 }, 5), 'the server saw the close');
    my $fourth = eval { raw_exchange($port, get_req('/fourth', 'Connection: close'), timeout => 5)->get } // '';
    my ($r) = parse_responses($fourth);
    is($r && $r->{status}, 200, 'a new connection is served after one of the two closed');
    is($r && $r->{body}, 'ok /fourth', 'with the app response');
    $conns[0]->close;
    done_server($server);
};

subtest 'timeout (keep-alive idle) 1 s' => sub {
    my @calls;
    my ($server, $port) = serve(app => counting_app(\@calls), timeout => 1);

    my $idle = open_conn($port);
    $idle->write(get_req('/idle'));
    my $ok = eval { $idle->read_until(responses_done(1), 5)->get; 1 };
    ok($ok, 'first response received') or diag($@);
    my $answered_at = now();
    my $closed = eval { $idle->wait_eof(5)->get; 1 };
    my $idle_for = now() - $answered_at;
    ok($closed, 'the idle keep-alive connection was closed by the server');
    cmp_ok($idle_for, '>=', 0.8, sprintf('not before ~timeout (%.2fs)', $idle_for));
    cmp_ok($idle_for, '<=', 3, 'within 3 s of the last response');
    is(complete_responses($idle->buffer, eof => 1), 1, 'nothing was sent besides the one response');

    my $busy = open_conn($port);
    $busy->write(get_req('/b1'));
    ok(eval { $busy->read_until(responses_done(1), 5)->get; 1 }, 'first request served');
    $busy->take;
    $loop->delay_future(after => 0.5)->get;
    ok(!$busy->is_eof, 'still open after 0.5 s idle');
    $busy->write(get_req('/b2'));
    my $second = eval { $busy->read_until(responses_done(1), 5)->get } // '';
    my ($r) = parse_responses($second);
    is($r && $r->{status}, 200, 'the request sent after 0.5 s idle is served');
    is($r && $r->{body}, 'ok /b2', 'with its own response');
    $busy->close;
    done_server($server);
};

subtest 'header_timeout: half a head is closed, the app never called' => sub {
    my @calls;
    my ($server, $port) = serve(app => counting_app(\@calls), header_timeout => 1);
    my $c = open_conn($port);
    my $t0 = now();
    $c->write("GET /half HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: yes\r\n");
    my $closed = eval { $c->wait_eof(5)->get; 1 };
    my $took = now() - $t0;
    ok($closed, 'the connection was closed by the server');
    cmp_ok($took, '>=', 0.8, sprintf('not before ~header_timeout (%.2fs)', $took));
    cmp_ok($took, '<=', 3, 'within header_timeout + 2 s');
    unlike($c->buffer, qr{\AHTTP/1\.\d 2}, 'no success response');
    is_deeply(\@calls, [], 'the app was never called');

    # The head of a later request on a keep-alive connection is timed too.
    my $k = open_conn($port);
    $k->write(get_req('/full'));
    ok(eval { $k->read_until(responses_done(1), 5)->get; 1 }, 'a complete request is served');
    $k->take;
    my $t1 = now();
    $k->write("GET /second-half HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    my $closed2 = eval { $k->wait_eof(5)->get; 1 };
    ok($closed2, 'a half second head on a keep-alive connection is closed too');
    cmp_ok(now() - $t1, '<=', 3, 'within header_timeout + 2 s');
    is_deeply(\@calls, ['/full'], 'the app saw only the complete request');
    $c->close;
    $k->close;
    done_server($server);
};

subtest 'body_timeout 1 s: stalled body → 408, closed, $receive yields http.disconnect' => sub {
    my (@events, $reason, $app_done, $conn_obj);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
        $conn_obj = $scope->{'pagi.connection'};
        while (1) {
            my $ev = await $receive->();
            push @events, { %$ev, body => length($ev->{body} // '') };
            last if $ev->{type} eq 'http.disconnect' || !$ev->{more};
        }
        $reason = $conn_obj->disconnect_reason;
        $app_done = now();
        # A response after the disconnect goes nowhere.
        await $send->({ type => 'http.response.start', status => 200, headers => [] });
        await $send->({ type => 'http.response.body', body => 'late' });
    };
    my ($server, $port) = serve(app => $app, body_timeout => 1);
    my $c = open_conn($port);
    my $t0 = now();
    $c->write("POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n" . ('x' x 1000));
    my $closed = eval { $c->wait_eof(6)->get; 1 };
    my $took = now() - $t0;
    ok($closed, 'the connection was closed by the server') or diag($@);
    cmp_ok($took, '<=', 3.5, sprintf('within ~3 s (%.2fs)', $took));
    cmp_ok($took, '>=', 0.8, 'not before ~body_timeout');
    my @r = parse_responses($c->buffer);
    is(scalar @r, 1, 'one response') or diag($c->buffer);
    is($r[0] && $r[0]{status}, 408, 'it is 408 (no response had started)');
    is(lc($r[0] && $r[0]{header}{connection} // ''), 'close', 'with connection: close');
    ok(wait_for(sub { $app_done }, 3), 'the app finished');
    ok(scalar @events >= 1, 'the app received events');
    is($events[-1] && $events[-1]{type}, 'http.disconnect', "the app's \$receive yielded http.disconnect")
        or diag(explain \@events);
    my @req = grep { $_->{type} eq 'http.request' } @events;
    ok(!grep({ !$_->{more} } @req), 'no http.request claimed the body was complete');
    cmp_ok(eval { my $n = 0; $n += $_->{body} for @req; $n } // 0, '<=', 1000, 'at most the 1000 bytes sent were delivered');
    is($reason, 'client_timeout', "pagi.connection disconnect_reason is 'client_timeout'");
    $c->close;
    done_server($server);
};

subtest 'request_timeout 1 s: an app that never responds → connection closed' => sub {
    my ($called, $conn_obj);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
        $called = now();
        $conn_obj = $scope->{'pagi.connection'};
        my $t = $loop->delay_future(after => 30);
        push @timers, $t;
        eval { await $t; 1 };    # cancelled when the test is done with it
    };
    my ($server, $port) = serve(app => $app, request_timeout => 1);
    my $c = open_conn($port);
    my $t0 = now();
    $c->write(get_req('/never'));
    my $closed = eval { $c->wait_eof(6)->get; 1 };
    my $took = now() - $t0;
    ok($called, 'the app was called');
    ok($closed, 'the connection was closed by the server') or diag($@);
    cmp_ok($took, '<=', 3.5, sprintf('within ~3 s (%.2fs)', $took));
    cmp_ok($took, '>=', 0.8, 'not before ~request_timeout');
    unlike($c->buffer, qr{\AHTTP/1\.\d 2}, 'no success response');
    note('request_timeout answer: ' . ($c->buffer =~ m{\A(HTTP/\S+ \d+[^\r\n]*)} ? $1 : '(nothing)'));
    ok(wait_for(sub { $conn_obj && !$conn_obj->is_connected }, 2), 'pagi.connection reports the request gone');
    $c->close;
    $_->cancel for grep { !$_->is_ready } @timers;
    done_server($server);
};

subtest 'defaults' => sub {
    is(PAGI::Server::Config->default('timeout'), 60, 'timeout 60');
    is(PAGI::Server::Config->default('header_timeout'), 30, 'header_timeout 30');
    is(PAGI::Server::Config->default('body_timeout'), 60, 'body_timeout 60');
    is(PAGI::Server::Config->default('request_timeout'), 0, 'request_timeout 0 (off)');
    is(PAGI::Server::Config->default('max_connections'), 0, 'max_connections 0');
    is(PAGI::Server::Config->default('shutdown_timeout'), 30, 'shutdown_timeout 30');
    my $app = sub { Future->done };
    my $default = PAGI::Server->new(app => $app, port => 0, quiet => 1);
    is($default->effective_max_connections, 1000, 'max_connections 0 means 1000');
    my $five = PAGI::Server->new(app => $app, port => 0, quiet => 1, max_connections => 5);
    is($five->effective_max_connections, 5, 'effective_max_connections honours max_connections => 5');
    my $big = PAGI::Server->new(app => $app, port => 0, quiet => 1, max_connections => 2500);
    is($big->effective_max_connections, 2500, 'and max_connections => 2500');
};

done_testing;
