package PAGI::Middleware::AccessLog;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;
use IO::Handle ();
use Time::HiRes ();

use PAGI::Server::AccessLog;

=head1 NAME

PAGI::Middleware::AccessLog - an access log line per request, as middleware

=head1 SYNOPSIS

    open my $log, '>>', 'access.log' or die $!;
    enable 'AccessLog', fh => $log, format => 'combined';

    enable 'AccessLog', logger => sub { my ($line) = @_; $syslog->info($line) };

=head1 DESCRIPTION

Writes one line for every C<http> request when the app has finished it
(its Future completed or failed), in any format of
L<PAGI::Server::AccessLog>: C<combined> by default, C<common> (CLF with
the request line), C<clf>, C<tiny>, C<json>, or a string of atoms such as
C<'%h %t "%r" %s %b %D'>. For apps on a server whose own access log is off,
or on servers without one.

The status is the one the app sent (C<500> when it died before sending any,
which is what the server answers then); the byte count is the body bytes
the app sent (for a C<file>/C<fh> body its C<length>, else the file's size
from C<offset>). Request bodies are not read or counted. Request header
values, the path and the query are logged with control characters, C<">
and C<\> escaped as C<\xHH>, so a client cannot forge log lines.

Only counting happens per event; nothing is buffered.

=head1 OPTIONS

=over

=item fh

The filehandle to print to; default C<STDERR>. Lines are flushed as they are
written.

=item logger

Instead of C<fh>: a code reference called with each line (ending in a
newline).

=item format

Default C<combined>. An unknown atom croaks, naming it.

=back

=cut

sub init {
    my ($self) = @_;
    my $format = $self->{format} // 'combined';
    $self->{line} = eval { PAGI::Server::AccessLog->compile($format) }
        or $self->option_error(format => 'is not valid: ' . ($@ =~ s/ at .*//sr));
    $self->option_error(logger => 'must be a code reference') if defined $self->{logger} && ref $self->{logger} ne 'CODE';
    if (!$self->{logger}) {
        my $fh = $self->{fh} // \*STDERR;
        $self->option_error(fh => 'must be a filehandle') unless ref $fh eq 'GLOB' || (Scalar::Util::blessed($fh) && $fh->can('print'));
        $self->{logger} = sub { print {$fh} $_[0]; $fh->flush if $fh->can('flush') };
    }
}

require Scalar::Util;

sub _clean {
    my ($text) = @_;
    return $text unless defined $text;
    $text =~ s/([\x00-\x1f\x7f"\\])/sprintf '\\x%02x', ord $1/ge;
    return $text;
}

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my $started = Time::HiRes::time;
    my ($status, $bytes) = (undef, 0);
    my $counting_send = async sub {
        my ($event) = @_;
        my $type = $event->{type};
        if ($type eq 'http.response.start') {
            $status //= $event->{status};
        }
        elsif ($type eq 'http.response.body') {
            if (defined $event->{file} || defined $event->{fh}) {
                my $size = defined $event->{length} ? $event->{length}
                         : defined $event->{file} ? (-s $event->{file} // 0) - ($event->{offset} // 0)
                         : 0;
                $bytes += $size if $size > 0;
            }
            else {
                $bytes += length($event->{body} // '');
            }
        }
        await $send->($event);
    };
    my $ok = eval { await $app->($scope, $receive, $counting_send); 1 };
    my $error = $@;
    $self->{logger}->($self->{line}->({
        client   => $scope->{client} ? $scope->{client}[0] : undef,
        time     => $started,
        method   => $scope->{method} // '-',
        path     => _clean($scope->{raw_path} // $scope->{path} // '/'),
        query    => _clean($scope->{query_string} // ''),
        protocol => 'HTTP/' . ($scope->{http_version} // '1.1'),
        status   => $status // 500,
        bytes    => $bytes,
        duration => Time::HiRes::time - $started,
        headers  => [ map { [ lc $_->[0], _clean($_->[1]) ] } @{ $scope->{headers} || [] } ],
    }));
    die $error unless $ok;
}

=head1 SEE ALSO

L<PAGI::Server::AccessLog>, the server's own C<access_log> option.

=cut

1;
