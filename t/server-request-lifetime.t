use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use Future::AsyncAwait;
use Scalar::Util qw(weaken);
use File::Temp ();

# The scope and the connection object ($scope->{'pagi.connection'}) refer to
# each other; the server breaks that cycle once both the app and the request
# are finished, however the request ends: the usual quick ending, with an
# access log, with a $receive still pending, and with completion callbacks.
# Each case holds only weak references to both and waits for them to go.

my (%weak, %seen, $kept_send);
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    return if $scope->{type} ne 'http';
    my $case = $scope->{path};
    @{ $weak{$case} }{qw(scope conn)} = ($scope, $scope->{'pagi.connection'});
    weaken($_) for values %{ $weak{$case} };
    if ($case eq '/callbacks') {
        $scope->{'pagi.connection'}->on_complete(sub { $seen{complete}++ });
    }
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => "ok $case" });
    $kept_send = $send if $case eq '/kept-send';
    if ($case eq '/pending-receive') {
        my $ev;
        do { $ev = await $receive->() } while $ev->{type} eq 'http.request';
        $seen{disconnect} = $ev->{type};
    }
};

sub released {
    my ($case) = @_;
    return wait_for(sub { !defined $weak{$case}{scope} && !defined $weak{$case}{conn} }, 10);
}

sub get_ok {
    my ($port, $path) = @_;
    my ($r) = parse_responses(raw_exchange($port, "GET $path HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", timeout => 10)->get);
    is($r && $r->{body}, "ok $path", "GET $path answered");
}

{
    my ($server, $port) = start_server(app => $app);
    for my $case (qw(/plain /pending-receive /callbacks)) {
        get_ok($port, $case);
        ok(released($case), "$case: scope and connection object freed once the request is over");
    }
    # $send is an XSUB bound to the connection object: one the app keeps
    # holds that object, still answers with a Future, and lets it go with
    # itself.
    get_ok($port, '/kept-send');
    ok(wait_for(sub { !defined $weak{'/kept-send'}{scope} }, 10), 'a kept $send: the scope is freed');
    ok(defined $weak{'/kept-send'}{conn}, 'and the connection object lives while $send does');
    my $late = eval { $kept_send->({ type => 'http.response.body', body => 'late' }) };
    ok($late && $late->isa('Future') && $late->is_ready, 'a send after the request returns a ready Future')
        or diag($@);
    undef $late;
    undef $kept_send;
    ok(released('/kept-send'), 'once $send goes, so does the connection object');
    is($seen{disconnect}, 'http.disconnect', 'a pending $receive got http.disconnect');
    is($seen{complete}, 1, 'on_complete ran once');
    stop_server($server);
}

{
    my $log = File::Temp->new;
    open my $fh, '>>', $log->filename or die "open: $!";
    my ($server, $port) = start_server(app => $app, access_log => $fh);
    get_ok($port, '/logged');
    ok(released('/logged'), 'with an access log: scope and connection object freed');
    ok(wait_for(sub { -s $log->filename }, 5), 'and the request was logged');
    stop_server($server);
}

done_testing;
